"""Benchmark: training throughput and MFU, KV-cache generation, one GFT step against one GRPO step.

    python experiments/bench.py                    # default config 4x4x128 and a larger 6x6x384 (~2 min, 2 CPU cores: 101 s idle)
    python experiments/bench.py --quick            # fewer repeats, default config only (~40 s)
    python experiments/bench.py --device cuda --compile
    python experiments/bench.py --init out/demo/base/ckpt.pt   # GFT/GRPO step with a trained model (rollouts stop at eos)
    python experiments/bench.py --quick --nanogpt .nanogpt/model.py   # on a GPU: + section 4 against nanoGPT's model
    python experiments/bench.py --quick --nanogpt .nanogpt/model.py --before .nanogpt/model_before.py   # + an older model.py
    python experiments/bench.py --quick --before .nanogpt/model_before.py   # CPU: + section 5, before / now
    python experiments/bench.py --gpu_dry_run --nanogpt .nanogpt/model.py --before .nanogpt/model_before.py   # below

Section 4 runs on CUDA only (a printed line says it was skipped elsewhere): issue 13's figures at
GPT-2-small shape (12x12x768, block 1024, vocab 50304, bf16 autocast, fused AdamW): training
tok/s and MFU, eager and compiled, against nanoGPT's model.py when --nanogpt gives its path (it
is never copied into this repository); generation at batch 64, prompt 64, 192 new tokens by the
eager cache, fast decode (GPT.generate(fast=True)), recompute and nanoGPT's generate; fast decode
at the default config; GFT step / GRPO step with fast decode. Each ratio is printed with PASS or
MISS against the issue's target. Changes that have a switch are timed both ways in the same run
(fused rotary against unfused; fast decode with its step compiled or not); the others against
--before, an older model.py of this project. experiments/gpu_check.sh runs it with the GPU tests.

--gpu_dry_run runs section 4 alone on the CPU at tiny shapes, before a GPU is spent on it: about a
minute here, it reaches every line a GPU would (compiled training and the profile too, unless
--gpu_compile 0), so a Python error in code that only a GPU runs shows up on a laptop. Its
figures mean nothing (CPU, float32 under a disabled CUDA autocast), and its PASS / MISS neither.

Section 5 runs with --before on any device: section 1's train.py step and section 2's cached
generation by the older model.py and by this one, the same weights, interleaved; now / before.

Every figure is a median over --repeats timed runs after warm-up runs. Runs that are compared
(cache vs recompute, GFT vs GRPO, 1 vs N threads) alternate, so drift in the machine's load
hits both sides. On a shared machine read the ratios, not the absolute numbers.

MFU = achieved model FLOP/s / peak FLOP/s; the peak is measured in the same run: median of
large square matmuls (float32 on CPU, bfloat16 on GPU where the model runs under autocast).
Model FLOPs per trained token (nanoGPT's estimate_mfu, after PaLM appendix B):
    6 * N + 12 * n_layer * n_embd * T
  N: parameters that take part in a matmul: every parameter but learned position embeddings
     (none with rotary positions, the default; the token embedding is the lm_head, tied, counted
     once). 6 = 2 (multiply + add) x 3 (forward and the two backward matmuls). Layer norms,
     GELU, rotary, softmax and AdamW are not counted.
  12 * n_layer * n_embd * T: attention's two matmuls (q k^T and att v), 2 * T * n_embd each per
     token per layer forward, x3 with backward; the whole T x T, as nanoGPT (the causal half
     that is masked is not subtracted).
Memory: on GPU torch.cuda.max_memory_allocated; on CPU the process's peak resident set size
(VmHWM, reset before each measurement through /proc/self/clear_refs after malloc_trim hands
freed heap back), which includes Python, torch and everything still allocated, so the growth
over the resident size at the start of the measurement is printed beside it.

Threads (CPU): section 0 times 1 thread against torch's default. When another process holds a
core, spinning OpenMP threads wait on a descheduled partner and N threads run several times
slower than 1; then the rest runs on 1 thread, as printed (--threads N forces N).
"""
import argparse
import collections
import contextlib
import copy
import ctypes
import gc
import importlib.util
import io
import os
import resource
import statistics
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the core files live one folder up
sys.path.insert(0, ROOT)

import torch

import data as D
import gft
import model as model_module
import train
from model import GPT, GPTConfig, pick_device

CONFIGS = {"default": dict(n_layer=4, n_head=4, n_embd=128), "larger": dict(n_layer=6, n_head=6, n_embd=384)}
BATCH, BLOCK = 32, 128  # nanoGPT's reference shape for the training step
GEN_BATCH, GEN_PROMPT, GEN_NEW = 16, 32, 64


# ----------------------------------------------------------------------------- measuring

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """Seconds one call of fn takes (GPU work included)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def medians(fns, device, repeats, warmup):
    """{name: median seconds} for several functions, their runs interleaved (A B A B ...)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = collections.defaultdict(list)
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(ts) for name, ts in times.items()}


def runnable(fns):
    """fns less the ones whose first call raises, each named with its error: on the GPU a path that
    compiles may fail on some platforms, and one failure should not cost the rest of the run."""
    ok = {}
    for name, fn in fns.items():
        try:
            fn()
            ok[name] = fn
        except Exception as e:
            print(f"   {name}: failed, left out ({type(e).__name__}: {str(e)[:300]})")
    return ok


class Memory:
    """Peak memory of what runs inside `with Memory(device) as m:`; m.peak and m.delta in MB."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            gc.collect()
            if _LIBC is not None:  # hand freed heap pages back, or the step reuses them unseen
                _LIBC.malloc_trim(0)
            try:  # "5" resets the peak RSS to the current RSS (Linux >= 4.0)
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass  # then VmHWM is the lifetime peak; the delta may read 0
            self.start = _proc_status("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _proc_status("VmHWM")
        self.peak, self.delta = self.peak / 2**20, max(0, self.peak - self.start) / 2**20

    def __str__(self):
        return f"{self.peak:.0f} MB (+{self.delta:.0f})"


try:
    _LIBC = ctypes.CDLL("libc.so.6")  # glibc, for malloc_trim
except OSError:
    _LIBC = None


def _proc_status(key):
    """Bytes of a /proc/self/status field; ru_maxrss where there is no /proc (macOS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:  # no /proc: fall through to what getrusage reports
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_kind(device):
    return "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak process RSS (VmHWM)"


def matmul_peak(device, n, repeats):
    """FLOP/s of an n x n matmul, median over repeats (bfloat16 on GPU, float32 on CPU)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    t = medians({"mm": lambda: a @ b}, device, repeats, warmup=2)["mm"]
    return 2 * n ** 3 / t


def flops_per_token(model, T):
    """6 N + 12 L C T (module docstring)."""
    c = model.config
    N = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in model.transformer.wpe.parameters())
    # (parameters() counts the tied embedding once; the same on nanoGPT's model)
    return 6 * N + 12 * c.n_layer * c.n_embd * T


# ----------------------------------------------------------------------------- 1. training step

def train_step_fn(model, device, loss_path, compile_):
    """One optimiser step on a fixed (BATCH, BLOCK) batch of random tokens, as train.run does
    it: zero_grad, forward, backward, clip the grad norm to 1, AdamW.

    loss_path "lm": model(x, targets) cross-entropy over every position (nanoGPT's step).
    loss_path "train.py": LogProbs (token_logprobs with entropy) + gft.sft_loss, the path every
    train.py mode takes, the same BLOCK + 1 tokens split into a 17-token prompt and a response.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (BATCH, BLOCK + 1), generator=g).to(device)
    resp = torch.zeros(BATCH, BLOCK + 1, dtype=torch.bool)
    resp[:, 17:] = True  # (BATCH, BLOCK + 1): 17 prompt tokens, then 112 response tokens
    resp = resp.to(device)
    optim = train.make_optimizer(model, 3e-4, 0.0)
    fwd = train.LogProbs(model) if loss_path == "train.py" else model
    if compile_:
        fwd = torch.compile(fwd)

    def step():
        optim.zero_grad(set_to_none=True)
        with train.autocast(device):
            if loss_path == "lm":
                _, loss = fwd(x[:, :-1], x[:, 1:])
            else:
                lp, _ = fwd(x, resp)
                loss = gft.sft_loss(lp, resp[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
    return step


def bench_training(name, shape, device, args, peak, tok):
    """Rows of the training table for one config; its loss paths' runs interleaved."""
    paths = ("lm", "train.py") if name == "default" else ("lm",)  # same matmuls; one is enough when slow
    steps, mem = {}, {}
    for loss_path in paths:
        with Memory(device) as mem[loss_path]:  # the model, its optimizer state, one step's activations
            torch.manual_seed(0)
            model = GPT(GPTConfig(block_size=BLOCK, vocab_size=tok.vocab_size, **shape)).to(device).train()
            steps[loss_path] = train_step_fn(model, device, loss_path, args.compile)
            steps[loss_path]()
    repeats = args.repeats if name == "default" else max(3, args.repeats // 2)
    t = medians(steps, device, repeats, warmup=1)
    rows = []
    for loss_path in paths:
        tps = BATCH * BLOCK / t[loss_path]
        mfu = tps * flops_per_token(model, BLOCK) / peak
        rows.append((f"{name} {label(shape)}", f"{model.num_params(False) / 1e6:.2f}M", loss_path,
                     f"{tps / 1e3:.1f}k", f"{1e3 * t[loss_path]:.0f}", f"{100 * mfu:.0f}%", str(mem[loss_path])))
    return rows


def bench_threads(device, args, tok):
    """CPU: the default config's training step (lm loss) and the matmul peak at 1 thread and at
    torch's default thread count, interleaved. Returns [(threads, tok/s, peak FLOP/s, MFU)]."""
    default = torch.get_num_threads()
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=BLOCK, vocab_size=tok.vocab_size, **CONFIGS["default"])).to(device).train()
    step = train_step_fn(model, device, "lm", False)
    a, b = (torch.randn(2048, 2048) for _ in range(2))

    def at(n, fn):
        def run():
            torch.set_num_threads(n)
            fn()
        return run
    fns = {}
    for n in sorted({1, default}):
        fns[("step", n)], fns[("mm", n)] = at(n, step), at(n, lambda: a @ b)
    t = medians(fns, device, args.repeats, warmup=2)
    torch.set_num_threads(default)
    out = []
    for n in sorted({1, default}):
        tps, pk = BATCH * BLOCK / t[("step", n)], 2 * 2048 ** 3 / t[("mm", n)]
        out.append((n, tps, pk, tps * flops_per_token(model, BLOCK) / pk))
    return out


# ----------------------------------------------------------------------------- 2. generation

def bench_generation(name, shape, device, args, tok):
    """A row of the generation table: cached and recomputed runs interleaved."""
    idx = torch.randint(0, 256, (GEN_BATCH, GEN_PROMPT), generator=torch.Generator().manual_seed(0)).to(device)

    def gen(use_cache, new=GEN_NEW):
        def run():
            g = torch.Generator(device=device).manual_seed(0)
            with train.autocast(device):
                model.generate(idx, new, temperature=1.0, eos_id=None, generator=g, use_cache=use_cache)
        return run
    with Memory(device) as mem:  # the model and one cached generation (KV cache included)
        torch.manual_seed(0)
        model = GPT(GPTConfig(block_size=BLOCK, vocab_size=tok.vocab_size, **shape)).to(device).eval()
        gen(True)()
    gen(False, 8)()  # warm-up of the recompute path, short
    repeats = args.repeats if name == "default" else max(3, args.repeats // 2)
    t = medians({"cache": gen(True), "recompute": gen(False)}, device, repeats, warmup=0)
    new_tokens = GEN_BATCH * GEN_NEW
    return (f"{name} {label(shape)}", f"{new_tokens / t['cache']:.0f}", f"{new_tokens / t['recompute']:.0f}",
            f"{t['recompute'] / t['cache']:.1f}x", str(mem))


# ----------------------------------------------------------------------------- 3. GFT and GRPO steps

class Phases:
    """Wall seconds per phase. wrap(name, fn) returns fn timed on every call; phases may nest."""

    def __init__(self, device):
        self.device, self.s = device, collections.defaultdict(float)

    def wrap(self, name, fn):
        def timed_fn(*a, **k):
            sync(self.device)
            t0 = time.perf_counter()
            out = fn(*a, **k)
            sync(self.device)
            self.s[name] += time.perf_counter() - t0
            return out
        return timed_fn


def rl_step_fn(mode, model, device, args, tok, pool, fast_decode=False):
    """One step of train.py's gft or grpo mode, on the real code: train.train_step's pieces
    (sample_rollouts; build_groups: teachers and verifier; step_loss: flatten_groups, LogProbs,
    the loss, its metrics), then
    backward, grad clip and AdamW as train.run. Returns run(step) -> (Phases, metrics), and
    the train.py config."""
    cfg = train.make_config(mode=mode, init="(bench)", device=str(device), compile=args.compile,
                            max_new_tokens=GEN_NEW, fast_decode=fast_decode)
    optim = train.make_optimizer(model, cfg.lr, cfg.weight_decay)
    logprob_fn = train.LogProbs(model)
    if args.compile:
        logprob_fn = torch.compile(logprob_fn)
    n_e, n_t = (cfg.n_expert, cfg.n_teacher) if mode == "gft" else (0, 0)

    def run(step):  # train.train_step's pieces (step_groups for these modes, then step_loss), each timed
        ph = Phases(device)
        probs = train.draw(pool, cfg.prompts_per_step, cfg.seed, step, 0, 1)
        rollouts = ph.wrap("rollouts", train.sample_rollouts)(model, tok, probs, cfg, step, cfg.n_rollout)
        groups, info = ph.wrap("groups", train.build_groups)(tok, probs, cfg, step, n_e, n_t, rollouts)
        loss, m = ph.wrap("loss", train.step_loss)(ph.wrap("logprobs", logprob_fn), tok, cfg, groups, info, None, 1,
                                                   device)
        optim.zero_grad(set_to_none=True)
        ph.wrap("backward", loss.backward)()

        def update():
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optim.step()
        ph.wrap("optimizer", update)()
        m["rollout_len"] = statistics.mean(len(r) for r in rollouts[0])
        return ph, m
    return run, cfg


def bench_rl(device, args, tok, init, fast_decode=False):
    pool = D.make_split("train", 2000, seed=1337)
    if init:
        base = train.model_from_checkpoint(train.load_checkpoint(init), init)
    else:
        torch.manual_seed(0)
        base = GPT(GPTConfig(block_size=BLOCK, vocab_size=tok.vocab_size, **CONFIGS["default"]))
    steps = {mode: rl_step_fn(mode, copy.deepcopy(base).to(device).train(), device, args, tok, pool, fast_decode)
             for mode in ("gft", "grpo")}
    repeats = args.repeats
    phases = {mode: collections.defaultdict(list) for mode in steps}
    info = {mode: collections.defaultdict(list) for mode in steps}
    mem = {}
    for r in range(-1, repeats):  # r = -1: warm-up; both modes see the same prompts at every step
        for mode, (run, _) in steps.items():
            with Memory(device) as m_:
                ph, m = run(r + 1)
            if r < 0:
                continue
            mem[mode] = max(mem.get(mode, (0, 0)), (m_.peak, m_.delta))
            s = ph.s
            split = {"rollouts": s["rollouts"],
                     "groups": s["groups"],
                     "forward": s["logprobs"],
                     "loss": s["loss"] - s["logprobs"],
                     "backward": s["backward"],
                     "optimizer": s["optimizer"]}
            split["total"] = sum(split.values())
            for k, v in split.items():
                phases[mode][k].append(v)
            info[mode]["frac_cut"].append(m["frac_cut"])
            info[mode]["rollout_len"].append(m["rollout_len"])
            info[mode]["rows"].append(m["tokens"])
    return steps, phases, info, mem


# ----------------------------------------------------------------------------- 4. GPU: GPT-2-small shape

# issue 13's reference shape and targets; nanoGPT's model.py is compared when --nanogpt gives its path
GPT2 = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, dropout=0.0, bias=False)
GPT2_BATCH = 16  # x 1024 tokens per training step (nanoGPT's micro-batch at this shape)
G2_BATCH, G2_PROMPT, G2_NEW = 64, 64, 192  # the rollout-like generation of issue 13
TARGETS = dict(train=1.0, gen_gpt2=8.0, gen_default=5.0, gft_grpo=0.6)


def verdict(ratio, target, at_most=False):
    ok = ratio <= target if at_most else ratio >= target
    return f"{'PASS' if ok else 'MISS'} (target {'<=' if at_most else '>='} {target:g}x)"


def load_model_py(path, name):
    """nanoGPT's model.py (karpathy/nanoGPT), or --before's older model.py of this project, imported
    from the given path; never copied here."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter count
        spec.loader.exec_module(mod)
    return mod


def gpt2_models(nanogpt, before=None):
    """{name: model} at GPT2 shape, random init; the same config for every one."""
    models = {}
    if nanogpt:
        torch.manual_seed(0)
        with contextlib.redirect_stdout(io.StringIO()):
            models["nanoGPT"] = nanogpt.GPT(nanogpt.GPTConfig(**GPT2))
    if before:  # the same weights as "ours" (same seed, same parameter names and init order)
        torch.manual_seed(0)
        models["before"] = before.GPT(before.GPTConfig(**GPT2))
    torch.manual_seed(0)
    models["ours"] = GPT(GPTConfig(**GPT2))
    models["ours unfused rotary"] = models["ours"]  # the same model, model.FUSE_ROTARY off in its steps
    torch.manual_seed(0)
    models["ours rope=False"] = GPT(GPTConfig(**GPT2, rope=False))  # nanoGPT's learned positions
    return models


def gpt2_train_step(model, device, compile_, fuse_rotary=True):
    """nanoGPT's train.py step at its GPT-2 config, for any model with forward(idx, targets):
    bf16 autocast, fused AdamW (lr 6e-4, betas (0.9, 0.95), decay 0.1 on matrices), clip 1.0,
    one micro-batch of GPT2_BATCH x 1024 random tokens. fuse_rotary: model.FUSE_ROTARY during the step."""
    xy = torch.randint(0, GPT2["vocab_size"], (GPT2_BATCH, GPT2["block_size"] + 1),
                       generator=torch.Generator().manual_seed(0)).to(device)
    x, y = xy[:, :-1].contiguous(), xy[:, 1:].contiguous()  # nanoGPT's forward views targets: contiguous
    groups = [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    optim = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), fused=True)
    fwd = torch.compile(model) if compile_ else model

    def step():
        optim.zero_grad(set_to_none=True)
        fused = model_module.FUSE_ROTARY
        model_module.FUSE_ROTARY = fused and fuse_rotary
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = fwd(x, y)
            loss.backward()
        finally:
            if not fuse_rotary:
                model_module.FUSE_ROTARY = fused
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
    return step


def gpt2_training(models, device, args, peak):
    """Training rows (eager, then compiled unless --gpu_compile 0), each model's runs interleaved."""
    T = GPT2["block_size"]
    rows = []
    for compile_ in (False, True) if args.gpu_compile else (False,):
        # compiled: nanoGPT's and ours only (each compile takes about a minute; compiled, rotary is fused anyway)
        timed_models = {k: m for k, m in models.items() if not (compile_ and k in ("ours rope=False",
                                                                                   "ours unfused rotary", "before"))}
        steps = runnable({name: gpt2_train_step(m.to(device).train(), device, compile_, "unfused" not in name)
                          for name, m in timed_models.items()})
        t = medians(steps, device, max(10, 2 * args.repeats), warmup=3)  # the first calls compile
        for name in t:
            m = timed_models[name]
            tps = GPT2_BATCH * T / t[name]
            vs = "-"
            if "nanoGPT" in t:  # tokens/s ratio = inverse time ratio
                vs = f"{t['nanoGPT'] / t[name]:.2f}x"
                if name == "ours":
                    vs += f" {verdict(t['nanoGPT'] / t[name], TARGETS['train'])}"
            rows.append((f"{name} {'compiled' if compile_ else 'eager'}", f"{tps / 1e3:.0f}k", f"{1e3 * t[name]:.1f}",
                         f"{100 * tps * flops_per_token(m, T) / peak:.0f}%", vs))
        del steps  # the optimizers' state
        torch.cuda.empty_cache()
    return rows


def generation_fns(model, idx, new, device, nanogpt_model=None, before_model=None):
    """{path: run()} for one batch of prompts idx: this project's fast decode (its step compiled or
    not), eager cache and recompute, --before's fast decode and eager cache, and nanoGPT's generate
    (which recomputes the prefix) when given; all bf16."""
    def ours(m=model, **kw):
        def run():
            g = torch.Generator(device=device).manual_seed(0)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                m.generate(idx, new, temperature=1.0, generator=g, **kw)
        return run
    fns = {"fast, compiled step": ours(fast=True, compile_step=True), "fast": ours(fast=True), "cache": ours(),
           "recompute": ours(use_cache=False)}
    if before_model is not None:
        fns.update({"before: fast": ours(before_model, fast=True), "before: cache": ours(before_model)})
    if nanogpt_model is not None:
        def nano():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                nanogpt_model.generate(idx, new, temperature=1.0)
        fns["nanoGPT generate"] = nano
    return fns


def gpt2_generation(models, device, args):
    """New tokens/s of every path at G2_BATCH x G2_PROMPT + G2_NEW, interleaved."""
    idx = torch.randint(0, GPT2["vocab_size"], (G2_BATCH, G2_PROMPT),
                        generator=torch.Generator().manual_seed(0)).to(device)
    nano, before = (models[k].to(device).eval() if k in models else None for k in ("nanoGPT", "before"))
    fns = runnable(generation_fns(models["ours"].to(device).eval(), idx, G2_NEW, device, nano, before))
    t = medians(fns, device, args.repeats, warmup=1)
    return {name: G2_BATCH * G2_NEW / sec for name, sec in t.items()}


def default_generation(device, args, tok, before=None):
    """Section 2's shape at the default config, with fast decode: new tokens/s per path."""
    idx = torch.randint(0, 256, (GEN_BATCH, GEN_PROMPT), generator=torch.Generator().manual_seed(0)).to(device)
    shape = dict(block_size=BLOCK, vocab_size=tok.vocab_size, **CONFIGS["default"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape)).to(device).eval()
    old = None
    if before:
        torch.manual_seed(0)
        old = before.GPT(before.GPTConfig(**shape)).to(device).eval()
    t = medians(runnable(generation_fns(model, idx, GEN_NEW, device, before_model=old)), device, args.repeats,
                warmup=1)
    return {name: GEN_BATCH * GEN_NEW / sec for name, sec in t.items()}


def profile_decode(device):
    """torch.profiler tables of 32 decode steps at GPT-2-small shape: eager cache, fast, fast with its
    step compiled; each with its kernel count (graph replays count their kernels too)."""
    from torch.profiler import ProfilerActivity, profile
    torch.manual_seed(0)
    model = GPT(GPTConfig(**GPT2)).to(device).eval()
    idx = torch.randint(0, GPT2["vocab_size"], (G2_BATCH, G2_PROMPT), device=device)
    fns = runnable(generation_fns(model, idx, 32, device))  # also the warm-up (and the compile)
    for path in [p for p in ("cache", "fast", "fast, compiled step") if p in fns]:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fns[path]()
            sync(device)
        table_ = prof.key_averages()
        kernels = sum(e.count for e in table_ if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA)
        print(f"\n   profile: 32 new tokens, {path}: {kernels} GPU events (kernels, copies, fills; top 12 by CUDA time)")
        print(table_.table(sort_by="cuda_time_total", row_limit=12))


def bench_gpu(device, args, tok, peak, rl_ratio_eager, before):
    """Section 4 (CUDA only): issue 13's figures, with PASS/MISS against its targets."""
    nanogpt = load_model_py(args.nanogpt, "nanogpt_model") if args.nanogpt else None
    models = gpt2_models(nanogpt, before)
    n = models["ours"].num_params(non_embedding=False)
    print(f"\n4. GPU, GPT-2-small shape ({label(GPT2)}, block {GPT2['block_size']}, vocab {GPT2['vocab_size']}, "
          f"{n / 1e6:.0f}M params), bf16 autocast, {torch.cuda.get_device_name(device)}"
          + ("" if nanogpt else "; nanoGPT not compared (--nanogpt PATH/model.py)"))
    print(f"   training: batch {GPT2_BATCH} x {GPT2['block_size']}, fused AdamW, clip 1.0; MFU against the "
          f"matmul peak above")
    rows = gpt2_training(models, device, args, peak)
    table(("model", "tok/s", "ms/step", "MFU", "vs nanoGPT"), rows)
    if not model_module.has_triton():
        fused = "no (Triton is not installed)"
    elif not any(row[0] == "ours eager" for row in rows):
        fused = "unknown: the 'ours eager' row failed (above)"
    else:
        fused = "yes" if model_module.FUSE_ROTARY else "no (its compile failed: the warning above)"
    print(f"   rotary fused in the 'ours eager' row: {fused}")

    print(f"\n   generation: batch {G2_BATCH}, prompt {G2_PROMPT}, {G2_NEW} new tokens, temperature 1 "
          f"(new tokens/s)")
    r = gpt2_generation(models, device, args)

    def vs(name, base):  # "-" where the base path failed (runnable printed why)
        return f"{r[name] / r[base]:.1f}x" if base in r else "-"
    table(("path", "new tok/s", "vs recompute", "vs nanoGPT generate"),
          [(name, f"{tps:.0f}", vs(name, "recompute"), vs(name, "nanoGPT generate")) for name, tps in r.items()])
    for name in [n for n in ("fast, compiled step", "fast", "cache") if n in r]:
        checks = [f"vs {base} {verdict(r[name] / r[base], TARGETS['gen_gpt2'])}"
                  for base in ("recompute", "nanoGPT generate") if base in r]
        print(f"   {name}: {'; '.join(checks) or 'no base to compare with'}")
    del models
    torch.cuda.empty_cache()

    d = default_generation(device, args, tok, before)
    per_path = ", ".join(f"{name} {tps:.0f}" for name, tps in d.items())
    print(f"\n   generation at the default config (section 2's shape), new tok/s: {per_path}")
    for name in [n for n in ("fast, compiled step", "fast", "cache") if n in d and "recompute" in d]:
        print(f"   {name} vs recompute: {d[name] / d['recompute']:.1f}x"
              + (f" {verdict(d[name] / d['recompute'], TARGETS['gen_default'])}" if name != "cache" else ""))

    _, phases, _, _ = bench_rl(device, args, tok, args.init, fast_decode=True)
    fast_ratio = statistics.median(phases["gft"]["total"]) / statistics.median(phases["grpo"]["total"])
    share = statistics.median(phases["grpo"]["rollouts"]) / statistics.median(phases["grpo"]["total"])
    print(f"\n   GFT step / GRPO step (section 3's steps): eager decode {rl_ratio_eager:.2f}, fast decode "
          f"{fast_ratio:.2f} {verdict(fast_ratio, TARGETS['gft_grpo'], at_most=True)}; with fast decode the "
          f"GRPO step is {1e3 * statistics.median(phases['grpo']['total']):.0f} ms, rollouts {share:.0%} of it")
    if args.gpu_profile:
        profile_decode(device)


def gpu_dry_run(args, tok, before):
    """--gpu_dry_run: bench_gpu on the CPU, its shapes shrunk (GPT-2's to 2x2x64, block 64, vocab 512;
    generation to batch 4, prompt 8, 12 new tokens), the device name stood in for, 1 repeat."""
    global GPT2_BATCH, G2_BATCH, G2_PROMPT, G2_NEW
    GPT2.update(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512)
    GPT2_BATCH, G2_BATCH, G2_PROMPT, G2_NEW = 2, 4, 8, 12
    torch.cuda.get_device_name = lambda device=None: "CPU (--gpu_dry_run: tiny shapes, the figures mean nothing)"
    args.repeats, args.gpu_profile = 1, True
    t0 = time.time()
    with warnings.catch_warnings():  # autocast("cuda") on the CPU warns that it is disabled, at every use
        warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
        # 1.0: section 3 did not run, so its eager GFT / GRPO ratio is a stand-in (printed, never measured)
        bench_gpu(torch.device("cpu"), args, tok, matmul_peak(torch.device("cpu"), 256, 3), 1.0, before)
    print(f"\n--gpu_dry_run: section 4 ran through in {time.time() - t0:.0f} s")


# ----------------------------------------------------------------------------- 5. --before

def bench_before(device, args, tok, before, configs):
    """Section 5 (any device, with --before): the train.py step (section 1's) and cached generation
    (section 2's), by an older model.py and by this one, the same weights, all runs interleaved.
    Prints ms per call and now / before; more repeats than elsewhere: the differences are small."""
    print(f"\n5. before / now: {args.before} against this model.py, the same weights, interleaved (ms per "
          f"call, median of {max(15, 3 * args.repeats)})")
    rows = []
    for cname, shape in configs.items():
        shape = dict(block_size=BLOCK, vocab_size=tok.vocab_size, **shape)
        idx = torch.randint(0, 256, (GEN_BATCH, GEN_PROMPT), generator=torch.Generator().manual_seed(0)).to(device)
        fns = {}
        for name, mod in (("before", before), ("now", model_module)):
            torch.manual_seed(0)
            fns[("train", name)] = train_step_fn(mod.GPT(mod.GPTConfig(**shape)).to(device).train(), device,
                                                 "train.py", False)
            torch.manual_seed(0)
            m = mod.GPT(mod.GPTConfig(**shape)).to(device).eval()

            def gen(m=m):
                with train.autocast(device):
                    m.generate(idx, GEN_NEW, temperature=1.0, generator=torch.Generator(device=device).manual_seed(0))
            fns[("generate", name)] = gen
        t = medians(fns, device, max(15, 3 * args.repeats), warmup=1)
        for what in ("train", "generate"):
            b, n = t[(what, "before")], t[(what, "now")]
            rows.append((f"{cname} {label(shape)}", "train.py step" if what == "train" else "generate (cache)",
                         f"{1e3 * b:.1f}", f"{1e3 * n:.1f}", f"{n / b:.3f}"))
    table(("config", "call", "before", "now", "now / before"), rows)


# ----------------------------------------------------------------------------- report

def label(shape):
    return f"{shape['n_layer']}x{shape['n_head']}x{shape['n_embd']}"


def table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in (header, *rows):
        print("  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per figure, median reported (>= 1)")
    p.add_argument("--quick", action="store_true", help="3 repeats, default config only")
    p.add_argument("--compile", action="store_true", help="torch.compile the trained forward (GPU)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads; 0 = torch's default, or 1 when the first measurement finds 1 faster")
    p.add_argument("--init", default="", help="train.py checkpoint for the GFT/GRPO step (default: random init)")
    p.add_argument("--nanogpt", default="", help="GPU section: path to karpathy/nanoGPT's model.py to compare with")
    p.add_argument("--before", default="", help="an older model.py of this project (e.g. `git show "
                   "COMMIT:model.py > .nanogpt/model_before.py`), timed beside the current one: section 5 "
                   "(any device) and rows of section 4 (GPU)")
    p.add_argument("--gpu_compile", type=int, default=1, choices=(0, 1),
                   help="GPU section: also time torch.compile'd training (1, ~1-2 min of compiling) or not (0)")
    p.add_argument("--gpu_profile", action="store_true", help="GPU section: torch.profiler tables of decoding")
    p.add_argument("--gpu_dry_run", action="store_true", help="section 4 alone, on the CPU at tiny shapes, "
                   "profile included: checks the GPU-only code runs; the figures mean nothing")
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    if args.quick:
        args.repeats = min(args.repeats, 3)
    if args.threads < 0:
        raise SystemExit(f"--threads must be >= 0, got {args.threads}")
    for opt_ in ("nanogpt", "before"):
        if getattr(args, opt_) and not os.path.isfile(getattr(args, opt_)):
            raise SystemExit(f"--{opt_} {getattr(args, opt_)!r}: no such file (give the path to a model.py)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    before = load_model_py(args.before, "before_model") if args.before else None
    tok = D.Tokenizer()
    if args.gpu_dry_run:
        return gpu_dry_run(args, tok, before)
    configs = {k: v for k, v in CONFIGS.items() if not (args.quick and k != "default")}
    t_start = time.time()
    load = f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores" if hasattr(os, "getloadavg") else ""
    print(f"bench.py | {device} | torch {torch.__version__} | median of {args.repeats} after warm-up{load}")
    print(f"models: GPTConfig defaults ({'rotary' if GPTConfig().rope else 'learned'} positions, block {BLOCK}, "
          f"vocab {tok.vocab_size}), random init unless --init")
    print(f"memory: {memory_kind(device)}, peak (+ growth over the start of the measurement)")
    if device.type == "cpu":
        print(f"\n0. threads: training step of the default config (lm loss) and a 2048^2 matmul, interleaved "
              f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})")
        res = bench_threads(device, args, tok)
        for n, tps, pk, mfu in res:
            print(f"   {n} thread{'s' if n > 1 else ' '}: {tps / 1e3:5.1f}k tok/s, matmul {pk / 1e9:3.0f} GFLOP/s, "
                  f"MFU {100 * mfu:.0f}%")
        if not args.threads and len(res) > 1 and res[0][1] > res[-1][1]:
            # a spinning OpenMP thread waits on one that another process has descheduled
            torch.set_num_threads(1)
            passive = "" if os.environ.get("OMP_WAIT_POLICY") else "; or OMP_WAIT_POLICY=PASSIVE"
            print(f"   1 thread is faster here (another process holds a core): the rest runs on 1 thread "
                  f"(--threads {res[-1][0]} to force{passive})")
    threads = f", {torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}" \
        if device.type == "cpu" else ""
    peak = matmul_peak(device, 2048 if device.type == "cpu" else 8192, 2 * args.repeats + 1)
    dt = "float32" if device.type == "cpu" else "bfloat16"
    print(f"\nmatmul peak ({dt}, {'2048' if device.type == 'cpu' else '8192'}^2, median{threads}): "
          f"{peak / 1e9:.1f} GFLOP/s")

    print(f"\n1. training step: forward + backward + clip + AdamW, batch {BATCH} x {BLOCK} tokens{threads}; "
          f"MFU = tok/s x (6N + 12 L C T) / peak")
    rows = []
    for name, shape in configs.items():
        rows += bench_training(name, shape, device, args, peak, tok)
    table(("config", "params", "loss", "tok/s", "ms/step", "MFU", "memory (model + AdamW + step)"), rows)
    print("   loss lm: model(x, targets), nanoGPT's step; train.py: LogProbs (token_logprobs + entropy) and "
          "gft.sft_loss, every train.py mode's path")

    print(f"\n2. generation: batch {GEN_BATCH}, prompt {GEN_PROMPT}, {GEN_NEW} new tokens, temperature 1, no eos "
          f"(new tokens/s{threads})")
    table(("config", "cache", "recompute", "cache speed-up", "memory (model + cached run)"),
          [bench_generation(name, shape, device, args, tok) for name, shape in configs.items()])

    steps, phases, info, mem = bench_rl(device, args, tok, args.init)
    cfgs = {mode: c for mode, (_, c) in steps.items()}
    g, r = cfgs["gft"], cfgs["grpo"]
    model_desc = args.init or "default config, random init"
    print(f"\n3. one RL step, {g.prompts_per_step} prompts, {model_desc}, max_new_tokens {g.max_new_tokens}, "
          f"temperature {g.temperature} (ms{threads})")
    names = {"rollouts": "rollout generation (sample)",
             "groups": "teachers, tokenise, verifier (build_groups)",
             "loss": "flatten_groups, loss, metrics",
             "forward": "forward (LogProbs: token_logprobs)",
             "backward": "backward", "optimizer": "clip + AdamW", "total": "total"}
    head = (f"GFT ({g.n_expert}e+{g.n_teacher}t+{g.n_rollout}r)", f"GRPO ({r.n_rollout}r)")
    rows = [(desc, *(f"{1e3 * statistics.median(phases[m][k]):.0f}" for m in ("gft", "grpo")))
            for k, desc in names.items()]
    rows.append(("rollouts cut at max_new_tokens", *(f"{statistics.mean(info[m]['frac_cut']):.0%}"
                                                    for m in ("gft", "grpo"))))
    rows.append(("mean rollout length (tokens)", *(f"{statistics.mean(info[m]['rollout_len']):.1f}"
                                                  for m in ("gft", "grpo"))))
    rows.append(("tokens in the trained batch (N x L)", *(f"{statistics.median(info[m]['rows']):.0f}"
                                                         for m in ("gft", "grpo"))))
    rows.append(("memory", *(f"{mem[m][0]:.0f} MB (+{mem[m][1]:.0f})" for m in ("gft", "grpo"))))
    table(("phase", *head), rows)
    ratio = statistics.median(phases["gft"]["total"]) / statistics.median(phases["grpo"]["total"])
    share = statistics.median(phases["grpo"]["rollouts"]) / statistics.median(phases["grpo"]["total"])
    print(f"   GFT step / GRPO step = {ratio:.2f}; rollouts are {share:.0%} of the GRPO step, so halving them "
          f"alone gives 1 - {share:.2f} / 2 = {1 - share / 2:.2f}")
    if device.type == "cuda":
        bench_gpu(device, args, tok, peak, ratio, before)
    else:
        print("\n4. GPU section (GPT-2-small shape, fast decode, nanoGPT): skipped, no CUDA device here")
    if args.before:
        bench_before(device, args, tok, before, configs)
    end_load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"\nbench took {time.time() - t_start:.0f} s{end_load}")


if __name__ == "__main__":
    main()
