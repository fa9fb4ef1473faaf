"""What only a GPU can check: bf16 autocast, CUDA graphs, torch.compile, one process per GPU.

Every test here is skipped without CUDA, so the CPU suite (and CI) is unchanged. On a GPU they
take well under a minute. Tolerances are bf16's: a bf16 mantissa has 8 bits (~0.4% relative).
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import data as D
import model as M
import train
from model import GPT, GPTConfig
import test_model  # tests/ is on sys.path (conftest.py)
from test_model import left_pad, multinomial_sample
import test_train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (GPU-only checks)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV = torch.device("cuda")
TOK = D.Tokenizer()
EOS, PAD = TOK.eos_id, TOK.pad_id
BF16 = dict(device_type="cuda", dtype=torch.bfloat16)


FIT_PROBLEMS = D.make_split("train", 8, seed=0)
# the fitted prompts (all of one length): on unseen prompts a tiny model has near-ties that bf16
# rounding decides differently in differently shaped (equally right) kernels
PROMPTS = [TOK.encode(p.prompt) for p in FIT_PROBLEMS]


@pytest.fixture(scope="module")
def fitted():
    """tests/test_model.py's fitted model, trained on the GPU: separated logits, so greedy tokens
    do not hinge on bf16 rounding between near-ties."""
    model, losses = test_model.fit(DEV)
    assert losses[-1] < test_model.FIT_LOSS, f"not fitted in {test_model.FIT_CAP} steps: {losses[-20:]}"
    return model


def test_kv_cache_logits_equal_recompute_on_cuda_under_bf16():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64)).to(DEV).eval()
    seq = torch.randint(0, 256, (4, 40), device=DEV)
    T = 24  # prompt; the remaining 16 tokens go through the cache one at a time
    with torch.no_grad(), torch.autocast(**BF16):
        full = model(seq)[0].float()  # (B, 40, V), recomputed in one pass
        cache = model._new_cache(4, 40, DEV)
        steps = [model._logits(seq[:, :T], cache=cache).float()]  # prefill (B, T, V)
        cache.length = T
        every_key = torch.ones(4, 1, 1, 40, dtype=torch.bool, device=DEV)
        for t in range(T, 40):
            pos = torch.full((1, 1), t, device=DEV)
            steps.append(model._logits(seq[:, t:t + 1], cache=cache, pos=pos, attn_mask=every_key[..., :t + 1]).float())
            cache.length += 1
    assert cache.dtype == cache.k[0].dtype == torch.bfloat16
    cached = torch.cat(steps, 1)
    scale = full.abs().max()
    torch.testing.assert_close(cached, full, rtol=0, atol=float(0.02 * scale))


@pytest.mark.parametrize("autocast", [True, False])
@pytest.mark.parametrize("pads", [0, 3])  # left pads before every prompt
def test_kv_cache_and_fast_graph_decode_give_recompute_greedy_tokens_on_cuda(fitted, autocast, pads):
    idx, mask = (x.to(DEV) for x in left_pad(PROMPTS, width=max(map(len, PROMPTS)) + pads))
    ctx = torch.autocast(**BF16) if autocast else torch.autocast("cuda", enabled=False)
    with ctx:
        kw = dict(temperature=0, pad_mask=mask, eos_id=EOS, pad_id=PAD)
        recompute = fitted.generate(idx, 50, use_cache=False, **kw)
        cached = fitted.generate(idx, 50, **kw)
        fast = fitted.generate(idx, 50, fast=True, **kw)  # captured as a CUDA graph
    for a, b in ((recompute, cached), (cached, fast)):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    for i, p in enumerate(FIT_PROBLEMS):  # and they are the fitted answers
        assert TOK.decode_response(fast.tokens[i].tolist()) == p.expert


@pytest.mark.parametrize("autocast", [True, False])
def test_compiled_fast_decode_gives_the_eager_cache_greedy_tokens_on_cuda(fitted, autocast):
    """compile_step=True: the step compiled (Triton), then captured as a CUDA graph."""
    from torch._dynamo.utils import counters
    idx, mask = (x.to(DEV) for x in left_pad(PROMPTS, width=max(map(len, PROMPTS)) + 2))
    ctx = torch.autocast(**BF16) if autocast else torch.autocast("cuda", enabled=False)
    breaks = sum(counters["graph_break"].values())
    with ctx:
        kw = dict(temperature=0, pad_mask=mask, eos_id=EOS, pad_id=PAD)
        cached = fitted.generate(idx, 50, **kw)
        compiled = fitted.generate(idx, 50, fast=True, compile_step=True, **kw)
    assert sum(counters["graph_break"].values()) == breaks  # one graph: nothing of the step left to eager
    assert all(torch.equal(x, y) for x, y in zip(cached, compiled))


def test_fused_rotary_training_step_matches_eager_rotary_under_bf16(monkeypatch):
    """FUSE_ROTARY (rotate_real compiled, the CUDA default) against the eager formula: same loss and
    gradients within bf16 rounding."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64)).to(DEV)
    x = torch.randint(0, 256, (4, 65), device=DEV)
    w = model.transformer.h[0].attn.c_attn.weight
    compiled, calls = M.fused_rotate_real(), []
    monkeypatch.setattr(M, "fused_rotate_real", lambda: lambda *a: calls.append(1) or compiled(*a))
    res = {}
    for fused in (False, True):
        monkeypatch.setattr(M, "FUSE_ROTARY", fused)
        with torch.autocast(**BF16):
            _, loss = model(x[:, :-1], x[:, 1:])
        res[fused] = loss.item(), torch.autograd.grad(loss, w)[0].float()
    assert M.has_triton() and M.FUSE_ROTARY, "no Triton, or the fused rotary failed and fell back to eager"
    assert len(calls) == 2  # one per layer, in the fused run only
    assert abs(res[True][0] - res[False][0]) < 0.005 * res[False][0]
    assert torch.nn.functional.cosine_similarity(res[True][1].flatten(), res[False][1].flatten(), dim=0) > 0.999


def test_fast_graph_decode_sampling_equals_eager_with_same_generator_in_float32(fitted):
    """Float32 (no autocast): the graph replays eager's kernels, so the same draws give the same tokens."""
    idx, mask = (x.to(DEV) for x in left_pad(PROMPTS))
    a, b = (fitted.generate(idx, 40, temperature=1.0, pad_mask=mask, eos_id=EOS, pad_id=PAD,
                            generator=torch.Generator(device=DEV).manual_seed(3), fast=fast) for fast in (False, True))
    assert torch.equal(a.tokens, b.tokens)


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.7, 5)])
def test_sampler_draws_what_torch_multinomial_draws_on_cuda(temperature, top_k):
    """GPT._sample's race against torch.multinomial on CUDA, GPT-2's vocabulary: the same tokens
    and the generator in the same state (tests/test_model.py checks the CPU)."""
    for seed in range(5):
        logits = torch.randn(64, 50304, device=DEV, generator=torch.Generator(DEV).manual_seed(seed)) * 4
        ours, theirs = (torch.Generator(DEV).manual_seed(seed) for _ in range(2))
        tokens, valid = GPT._sample(logits, temperature, top_k, ours)
        assert torch.equal(tokens, multinomial_sample(logits, temperature, top_k, theirs)) and valid.all()
        assert torch.equal(ours.get_state(), theirs.get_state())


def test_bf16_rotary_training_step_matches_float32_within_bf16_rounding():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64)).to(DEV)
    x = torch.randint(0, 256, (4, 65), device=DEV)
    _, loss32 = model(x[:, :-1], x[:, 1:])
    g32 = torch.autograd.grad(loss32, model.transformer.h[0].attn.c_attn.weight)[0]
    with torch.autocast(**BF16):
        _, loss16 = model(x[:, :-1], x[:, 1:])
    g16 = torch.autograd.grad(loss16, model.transformer.h[0].attn.c_attn.weight)[0]
    assert abs(loss16.item() - loss32.item()) < 0.02 * loss32.item()
    assert torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("fast_decode", [False, True])
def test_bf16_gft_step_gives_finite_loss_and_gradients(fast_decode):
    torch.manual_seed(0)
    model = GPT(GPTConfig()).to(DEV).train()
    cfg = train.make_config(mode="gft", init="(test)", device="cuda", prompts_per_step=4, max_new_tokens=48,
                            fast_decode=fast_decode)
    pool = D.make_split("train", 64, seed=1337)
    loss, m = train.train_step(model, train.LogProbs(model), TOK, cfg, 0, pool, None, 0, 1)
    loss.backward()
    assert math.isfinite(loss.item()) and math.isfinite(m["entropy"])
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_compile_true_trains_a_few_steps(tmp_path):
    out = str(tmp_path / "compiled")
    train.main(["pretrain", "--device", "cuda", "--compile", "true", "--out", out, "--steps", "3",
                "--batch_size", "8", "--gate_pass1", "0", *test_train.TINY, *test_train.fast(["pretrain"])])
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    gft = str(tmp_path / "gft")  # rollouts: fast decode's step compiled, then captured
    train.main(["gft", "--device", "cuda", "--compile", "true", "--init", os.path.join(out, "ckpt.pt"), "--out", gft,
                "--steps", "2", "--prompts_per_step", "4", *test_train.fast(["gft"])])  # the CPU tests' small settings
    rows = [json.loads(l) for l in open(os.path.join(gft, "metrics.jsonl"))]
    assert [math.isfinite(r["loss"]) for r in rows if "loss" in r] == [True, True]


def test_torchrun_with_more_processes_than_gpus_stops_with_what_to_do(tmp_path):
    n = torch.cuda.device_count()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n + 1), "--standalone",
           "--log-dir", str(tmp_path / "torchrun"),  # else a torchelastic_* folder is left behind in /tmp
           os.path.join(ROOT, "train.py"), "pretrain", "--steps", "1", "--out", str(tmp_path / "x")]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert p.returncode != 0
    assert f"{n + 1} processes on this node but it has {n} GPU" in p.stdout + p.stderr
    assert "--device cpu" in p.stdout + p.stderr
