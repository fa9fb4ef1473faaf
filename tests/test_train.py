"""The pipeline: every mode runs, SFT is GFT's limiting case step for step, resume is exact,
settings are checked, pass@k is unbiased, and two DDP processes match one."""
import dataclasses
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys

import pytest
import torch
from hypothesis import example, given, settings, strategies as st

import data as D
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "96"]
FAST = ["--eval_n", "4", "--passk_problems", "2", "--passk_n", "2", "--kl_n", "2", "--n_prompts", "32",
        "--log_every", "1", "--max_new_tokens", "48"]


def fast(args, flags=FAST):
    """flags for the command line args, less the settings its mode would refuse as unread (train.READ_BY):
    --n_prompts for pretrain, eval and a --data file (which brings its own pool), --log_every for eval."""
    skip = {k for k, modes in train.READ_BY.items() if args[0] not in modes}
    if "--data" in args:
        skip.add("n_prompts")
    return [x for i in range(0, len(flags), 2) if flags[i][2:] not in skip for x in flags[i:i + 2]]


def run(*args):
    return train.main(list(args) + fast(args))


def weights(path):
    return train.load_checkpoint(path)["model"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    run("pretrain", "--out", str(out), "--steps", "6", "--batch_size", "8", *TINY)
    return str(out / "ckpt.pt")


def finite_losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(l) for l in f]
    losses = [r["loss"] for r in rows if "loss" in r]
    return losses and all(math.isfinite(x) for x in losses)


@pytest.mark.parametrize("mode", ["sft", "dft", "gft", "grpo"])
def test_each_mode_runs_and_its_loss_is_finite(base, tmp_path, mode):
    out = str(tmp_path / mode)
    size = ["--batch_size", "4"] if mode in ("sft", "dft") else ["--prompts_per_step", "2", "--n_rollout", "2"]
    r = run(mode, "--init", base, "--out", out, "--steps", "2", *size)
    assert finite_losses(out)
    assert 0.0 <= r["acc_test"] <= 1.0 and math.isfinite(r["kl_base"]) and r["kl_base"] >= -1e-6
    assert math.isfinite(r["kl_base_samples"]) and r["kl_base_samples"] >= -1e-6
    ev = run("eval", "--init", os.path.join(out, "ckpt.pt"), "--out", str(tmp_path / "eval"))  # not ./out/eval
    for split in ("test", "ood", "probe", "easy"):  # eval of the checkpoint reproduces the run's final eval
        assert 0.0 <= r[f"acc_{split}"] <= 1.0 and ev[f"acc_{split}"] == r[f"acc_{split}"], split


def test_gft_with_tau_zero_and_one_expert_takes_the_same_step_as_sft(base, tmp_path):
    run("sft", "--init", base, "--out", str(tmp_path / "sft"), "--steps", "1", "--batch_size", "4")
    run("gft", "--init", base, "--out", str(tmp_path / "gft"), "--steps", "1", "--prompts_per_step", "4",
        "--n_expert", "1", "--n_teacher", "0", "--n_rollout", "0", "--tau", "0")
    a, b = weights(str(tmp_path / "sft" / "ckpt.pt")), weights(str(tmp_path / "gft" / "ckpt.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], weights(base)["lm_head.weight"])  # a step was taken


def test_fast_decode_rollouts_take_the_same_gft_step_as_eager_ones(base, tmp_path, monkeypatch):
    args = ("gft", "--init", base, "--steps", "1", "--prompts_per_step", "2", "--n_rollout", "3", "--device", "cpu")
    import model  # the module whose fast_generate is counted
    calls, fast_generate = [], model.fast_generate
    monkeypatch.setattr(model, "fast_generate", lambda *a: calls.append(1) or fast_generate(*a))
    run(*args, "--out", str(tmp_path / "eager"))  # unset: eager on the CPU
    assert not calls
    run(*args, "--out", str(tmp_path / "fast"), "--fast_decode", "true")
    assert len(calls) == 1  # the step's rollouts; evaluation stays on the eager path
    a, b = weights(str(tmp_path / "eager" / "ckpt.pt")), weights(str(tmp_path / "fast" / "ckpt.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_decode_unset_is_on_for_cuda_and_false_turns_it_off(base, tmp_path, monkeypatch):
    args = ("gft", "--init", base, "--steps", "1", "--prompts_per_step", "2", "--n_rollout", "3", "--device", "cuda")
    import model
    calls, fast_generate = [], model.fast_generate
    monkeypatch.setattr(model, "fast_generate", lambda *a: calls.append(1) or fast_generate(*a))
    run(*args, "--out", str(tmp_path / "off"), "--fast_decode", "false")
    assert not calls
    run(*args, "--out", str(tmp_path / "unset"))
    assert len(calls) == 1


def test_resume_after_interruption_equals_uninterrupted_run_bitwise(base, tmp_path, monkeypatch):
    args = ("gft", "--init", base, "--steps", "4", "--ckpt_every", "2", "--prompts_per_step", "2", "--n_rollout", "2")
    run(*args, "--out", str(tmp_path / "full"))

    calls, real_step = [], train.train_step

    def dying_step(*a, **k):  # the 4th call (step 3) dies after the checkpoint of step 2
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("simulated kill")
        return real_step(*a, **k)

    monkeypatch.setattr(train, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run(*args, "--out", str(tmp_path / "cut"))
    assert train.load_checkpoint(str(tmp_path / "cut" / "ckpt.pt"))["step"] == 2
    monkeypatch.setattr(train, "train_step", real_step)
    run(*args, "--out", str(tmp_path / "cut"), "--resume", "true")
    a, b = weights(str(tmp_path / "full" / "ckpt.pt")), weights(str(tmp_path / "cut" / "ckpt.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(l).get("step") for l in open(tmp_path / "cut" / "metrics.jsonl")]
    assert [s for s in steps if s] == [1, 2, 3, 4]  # no duplicated or missing log lines


def test_resume_with_changed_settings_is_an_error_unless_overridden(base, tmp_path):
    out = str(tmp_path / "r")
    run("sft", "--init", base, "--out", out, "--steps", "2", "--batch_size", "4")
    with pytest.raises(ValueError, match=r"lr: 3e-05 -> 0.001"):
        run("sft", "--init", base, "--out", out, "--steps", "2", "--batch_size", "4", "--lr", "1e-3", "--resume", "true")
    run("sft", "--init", base, "--out", out, "--steps", "3", "--batch_size", "4", "--resume", "true", "--override", "true")
    assert train.load_checkpoint(os.path.join(out, "ckpt.pt"))["step"] == 3


def test_unknown_setting_is_an_error_naming_it():
    with pytest.raises(SystemExit, match="--bogus"):
        train.parse_args(["gft", "--bogus", "1"])


@pytest.mark.parametrize("flag,value,pattern", [
    ("--tau", "1.5", r"--tau 1.5 is out of range \[0.0, 1.0\]"),
    ("--lr", "-1", r"--lr -1.0 is out of range"),
    ("--temperature", "-0.5", r"--temperature -0.5 is out of range"),
    ("--prompts_per_step", "0", r"--prompts_per_step 0 is out of range \[1, inf\]"),
])
def test_out_of_range_setting_is_an_error_naming_setting_and_range(flag, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        train.parse_args(["gft", "--init", "x.pt", flag, value])


@pytest.mark.parametrize("n,c,k", [(n, c, k) for n in range(1, 7) for c in range(n + 1) for k in range(1, n + 1)])
def test_pass_at_k_equals_brute_force_over_all_subsets(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert train.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_two_ddp_processes_match_one_process_on_the_same_global_batch(base, tmp_path):
    if shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")):
        pytest.fail("torchrun not found next to the Python interpreter")
    # --device cpu: two gloo processes on the CPU, also on a machine with one GPU (auto would
    # give each process cuda:LOCAL_RANK and stop: test_more_processes_than_gpus_stop_with_what_to_do).
    # --standalone: a free port, so two test sessions at once on one machine cannot collide (EADDRINUSE)
    args = ["sft", "--init", base, "--steps", "2", "--batch_size", "6", "--device", "cpu", *FAST]
    train.main(args + ["--out", str(tmp_path / "one")])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # --log-dir: torchrun's per-rank log folder, else a torchelastic_* folder left behind in /tmp
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "--log-dir", str(tmp_path / "torchrun"), os.path.join(ROOT, "train.py"), *args,
           "--out", str(tmp_path / "two")]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    # stderr's head too: a rank's own message comes before torchrun's long summary of the failure
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[:3000] + "\n[...]\n" + p.stderr[-1500:]
    a, b = weights(str(tmp_path / "one" / "ckpt.pt")), weights(str(tmp_path / "two" / "ckpt.pt"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_more_processes_than_gpus_stop_with_what_to_do(monkeypatch, device):
    """torchrun --nproc_per_node 2 on a one-GPU machine (simulated: no GPU needed)."""
    for k, v in dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2").items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set_device reached"))
    with pytest.raises(SystemExit, match=r"2 processes on this node but it has 1 GPU.*"
                                         r"--nproc_per_node 1 or fewer.*--device cpu"):
        train.setup_distributed(train.Config(mode="sft", device=device))


def test_every_evaluation_during_training_is_logged(base, tmp_path):
    out = str(tmp_path / "ev")
    fast = FAST[:FAST.index("--log_every")]  # everything but the log interval and the rollout length
    train.main(["sft", "--init", base, "--out", out, "--steps", "4", "--batch_size", "4", "--eval_every", "3",
                *fast, "--log_every", "2", "--max_new_tokens", "48"])
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    logged = {r["step"]: r for r in rows if "step" in r and "final" not in r}
    assert sorted(logged) == [2, 3, 4]  # step 3 is not a log step, but it was evaluated
    assert "acc_test" in logged[3] and "kl_base" in logged[3] and "acc_test" not in logged[2]
    assert all(r["ms_per_step"] > 0 for r in logged.values())


def test_kl_to_base_is_zero_for_the_base_itself_and_measured_on_the_base_s_own_samples(base):
    ck = train.load_checkpoint(base)
    model, same = train.model_from_checkpoint(ck), train.model_from_checkpoint(ck)
    cfg = train.make_config(mode="eval", init=base, eval_n=4, passk_problems=2, passk_n=2, kl_n=3, max_new_tokens=48)
    tok = train.D.Tokenizer()
    splits = train.load_problems(cfg, tok, 96)
    r = train.evaluate(model, tok, splits, cfg, base=same)
    assert r["kl_base"] == 0.0 and r["kl_base_samples"] == 0.0
    with torch.no_grad():  # a model that has moved: the contexts must still be the base's samples
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    anchors = splits["test"][:3] + splits["probe"][:3]
    on_base = train.base_sample_groups(same, tok, anchors, 48)
    assert on_base == train.base_sample_groups(same, tok, anchors, 48)  # fixed contexts
    assert on_base != train.base_sample_groups(model, tok, anchors, 48)
    r = train.evaluate(model, tok, splits, cfg, base=same)
    assert r["kl_base_samples"] == train.kl_to_base(model, same, tok, on_base) > 0


def test_pass_at_k_is_sampled_on_the_split_passk_split_names(base, monkeypatch):
    ck = train.load_checkpoint(base)
    model = train.model_from_checkpoint(ck)
    tok = train.D.Tokenizer()
    seen = []

    def spy(model, tok, prompts, n, *args):
        seen.append(prompts)
        return [[tok.eos_id]] * (len(prompts) * n), None
    monkeypatch.setattr(train, "sample", spy)
    for split in ("test", "ood"):
        cfg = train.make_config(mode="eval", init=base, eval_n=4, passk_problems=3, passk_n=2, kl_n=2,
                                max_new_tokens=48, passk_split=split)
        splits = train.load_problems(cfg, tok, 96)
        r = train.evaluate(model, tok, splits, cfg)
        assert seen[-1] == [p.prompt for p in splits[split][:3]] and r["pass@2"] == 0.0
    assert set(seen[0]).isdisjoint(seen[1])  # the two splits share no problem
    with pytest.raises(ValueError, match="--passk_split ood: a --data file has a test split only"):
        train.make_config(mode="eval", init=base, data="x.jsonl", passk_split="ood")
    cfg = train.make_config(mode="eval", init=base, eval_n=2, passk_problems=5, passk_n=2, kl_n=2, max_new_tokens=48)
    splits = train.load_problems(cfg, tok, 96)
    train.evaluate(model, tok, splits, cfg)  # more pass@k problems than --eval_n: all of them, not eval_n
    assert seen[-1][:2] == [p.prompt for p in splits["test"]] and len(set(seen[-1])) == 5


def test_base_mix_sets_pretraining_s_operand_counts_and_ood_ops_the_ood_split_s(base):
    tok = train.D.Tokenizer()
    cfg = train.make_config(mode="pretrain", base_mix="6:1", batch_size=64)
    groups, _ = train.step_groups(None, tok, cfg, 0, None, 0, 1)
    sums = [tok.decode(g.prompt) for g in groups if "-" not in tok.decode(g.prompt)]
    assert len(sums) > 40 and all(p.count("+") == 5 for p in sums)  # 6 operands; the rest are probe rows
    unset, default = [[g.prompt for g in train.step_groups(None, tok, train.make_config(mode="pretrain", base_mix=m),
                                                           3, None, 0, 1)[0]] for m in ("", "2:0.25,3:0.45,4:0.15,5:0.15")]
    assert unset == default  # unset is data.TaskConfig's mix: the same problems
    cfg = train.make_config(mode="eval", init=base, eval_n=8, ood_ops=6)
    splits = train.load_problems(cfg, tok, 96)
    assert all(len(p.operands) == 6 for p in splits["ood"]) and all(len(p.operands) == 4 for p in splits["test"])


@pytest.mark.parametrize("style", ["chain", "tree"])
def test_train_ops_sets_the_fine_tuning_and_held_out_sums_and_leaves_the_probes(style):
    tok = train.D.Tokenizer()
    cfg = train.make_config(mode="gft", init="x.pt", eval_n=16, n_prompts=32, train_ops=6, ood_ops=7,
                            expert_style=style)
    splits = train.load_problems(cfg, tok, 128)
    for name, ops in (("train", 6), ("test", 6), ("passk", 6), ("ood", 7), ("easy", 2), ("probe", 2)):
        assert {len(p.operands) for p in splits[name]} == {ops}, name
    form = train.D.EXPERT_STYLES[style]  # the fine-tuning pool's experts in the asked form, every answer right
    assert all(p.expert == form(p.operands) and train.D.verify(p.expert, p.answer) for p in splits["train"])
    default = train.load_problems(train.make_config(mode="gft", init="x.pt", eval_n=16, n_prompts=32), tok, 128)
    assert [p.prompt for p in default["probe"]] == [p.prompt for p in splits["probe"]]


@pytest.mark.parametrize("settings, pattern", [
    (dict(mode="pretrain", base_mix="2:0.5,3"), r"--base_mix '2:0.5,3': write operand counts"),
    (dict(mode="pretrain", base_mix="1:1"), r"--base_mix '1:1': write operand counts >= 2"),
    (dict(mode="pretrain", base_mix="2:-1,3:1"), r"--base_mix '2:-1,3:1'"),
    (dict(mode="sft", init="x.pt", base_mix="2:1"), r"--base_mix 2:1 is for pretrain"),
    (dict(mode="eval", init="x.pt", data="x.jsonl", ood_ops=6), r"--train_ops 4 / --ood_ops 6 shape the built-in"),
    (dict(mode="eval", init="x.pt", data="x.jsonl", train_ops=3), r"--train_ops 3 / --ood_ops 5 shape the built-in"),
    (dict(mode="eval", init="x.pt", ood_ops=9), r"--ood_ops 9 is out of range \[4, 8\]"),
    (dict(mode="eval", init="x.pt", train_ops=2), r"--train_ops 2 is out of range \[3, 7\]"),
    (dict(mode="eval", init="x.pt", train_ops=6, ood_ops=6), r"--ood_ops 6 must be more than --train_ops 6"),
    (dict(mode="gft", init="x.pt", train_ops=5), r"--ood_ops 5 must be more than --train_ops 5"),
    (dict(mode="pretrain", train_ops=5, ood_ops=6), r"--train_ops 5: mode pretrain's gate is on 4-operand sums"),
    (dict(mode="demo", train_ops=3), r"--train_ops 3: mode demo's gate"),
])
def test_task_settings_out_of_place_or_malformed_are_errors_naming_them(settings, pattern):
    with pytest.raises(ValueError, match=pattern):
        train.make_config(**settings)


# ----------------------------------------------------------------------------- the demo

LP = {"chain": -0.05, "tree": -2.5}


def metrics(acc, kl=None):
    return {"acc_test": acc, **({"kl_base_samples": kl} if kl is not None else {})}


@pytest.mark.parametrize("accs, kls, says", [
    ((0.65, 0.20, 0.75), (0.020, 0.002), ("from 0.65 to 0.20 and GFT to 0.75, above SFT", "less drift",
                                          "KL 0.002 against 0.020")),
    ((0.65, 0.90, 0.70), (0.010, 0.030), ("from 0.65 to 0.90 and GFT to 0.70, below SFT", "more drift")),
    ((0.65, 0.749, 0.751), (0.0101, 0.0099), ("and GFT to 0.75, level with SFT", "the same drift")),  # as printed
])
def test_demo_reading_reads_its_own_table(accs, kls, says):
    rows = {"base": metrics(accs[0]), "sft": metrics(accs[1], kls[0]), "gft": metrics(accs[2], kls[1])}
    text = train.demo_reading(rows, LP, "tree", "out/d")
    assert all(x in text for x in says), text
    assert "tree-form demonstrations (log-prob -2.50 per token under the base, against -0.05" in text
    assert text.endswith("python train.py --expert_style chain --out out/d")  # the control, on the same base


def test_demo_reading_of_the_control_names_one_form_and_points_to_the_off_policy_regime():
    rows = {"base": metrics(0.6), "sft": metrics(0.9, 0.05), "gft": metrics(0.8, 0.02)}
    text = train.demo_reading(rows, LP, "chain", "out/demo")
    assert "chain-form demonstrations, the form the base writes (log-prob -0.05" in text and "tree" in text
    assert text.endswith("python train.py --expert_style tree --out out/demo")


def test_expert_style_default_is_tree_for_the_demo_and_chain_elsewhere():
    assert train.make_config(mode="demo").expert_style == "tree"
    assert train.make_config(mode="gft", init="x.pt").expert_style == "chain"
    assert train.make_config(mode="demo", expert_style="chain").expert_style == "chain"
    with pytest.raises(ValueError, match="mode demo runs the built-in task"):
        train.make_config(mode="demo", data="x.jsonl")


def test_demo_fine_tunes_sft_and_gft_on_its_style_for_demo_steps_from_its_base(base, tmp_path, monkeypatch):
    root = tmp_path / "demo"
    (root / "base").mkdir(parents=True)
    ck = train.load_checkpoint(base)
    train.save_checkpoint(str(root / "base" / "ckpt.pt"), **dict(ck, finished=True))
    seen = []

    def fake_run(cfg):  # every metric the demo reads, in the band for the base
        seen.append(cfg)
        return {"acc_test": 0.5, "pass@1": 0.3, "kl_base": 0.01, "kl_base_samples": 0.01}
    monkeypatch.setattr(train, "run", fake_run)
    train.main(["--out", str(root), "--eval_n", "4"])
    ev, sft, gft_ = seen
    assert ev.mode == "eval" and ev.out == str(root / "base_eval")
    assert (sft.mode, gft_.mode) == ("sft", "gft")
    for c in (sft, gft_):
        assert c.steps == train.DEMO_STEPS and c.expert_style == "tree" and c.init == str(root / "base" / "ckpt.pt")
        assert c.out == str(root / f"{c.mode}_tree")
    assert sft.batch_size == gft_.prompts_per_step * (gft_.n_expert + gft_.n_teacher + gft_.n_rollout)


def test_expert_logprob_is_the_mean_over_expert_tokens_one_sequence_at_a_time(base):
    model = train.model_from_checkpoint(train.load_checkpoint(base)).eval()
    tok = D.Tokenizer()
    probs = D.make_split("train", 5, seed=3, cfg=D.TaskConfig(expert_style="tree"))
    total, n = 0.0, 0
    for p in probs:  # the obvious way: each sequence alone, log p of every response token after its prefix
        prompt, resp = tok.encode(p.prompt), tok.encode(p.expert) + [tok.eos_id]
        seq = torch.tensor([prompt + resp])
        with torch.no_grad():
            logp = torch.log_softmax(model(seq[:, :-1])[0][0].double(), -1)
        for t in range(len(prompt), seq.size(1)):
            total += float(logp[t - 1, seq[0, t]])
            n += 1
    assert train.expert_logprob(model, tok, probs) == pytest.approx(total / n, abs=1e-5)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(0, 40), st.integers(1, 120), st.floats(0.0, 1.0), st.sampled_from(["cosine", "constant"]))
def test_lr_warms_up_linearly_to_the_peak_then_holds_or_follows_a_half_cosine_to_the_floor_at_steps(
        warmup, steps, ratio, schedule):
    lr = 1e-3
    cfg = train.make_config(mode="pretrain", steps=steps, lr=lr, warmup=warmup, min_lr_ratio=ratio, schedule=schedule)
    at = [train.lr_at(s, cfg) for s in range(max(steps, warmup) + 1)]
    for s in range(warmup):  # step s (0-based) trains at (s + 1) / warmup of the peak: never 0, the peak at its end
        assert at[s] == pytest.approx(lr * (s + 1) / warmup, rel=1e-12)
    after, floor = at[warmup:], lr * ratio
    if schedule == "constant":
        assert all(x == lr for x in after)
        return
    assert after[0] == pytest.approx(lr, rel=1e-12)  # the peak right after warm-up
    if steps > warmup:
        n = steps - warmup  # after[n]: step --steps, where the cosine reaches the floor
        assert after[n] == pytest.approx(floor, rel=1e-9, abs=1e-15)
        assert all(a >= b - 1e-15 for a, b in zip(after, after[1:n + 1]))  # never rises
        for d in range(n + 1):  # half a cosine: point-symmetric about its midpoint
            assert after[d] + after[n - d] == pytest.approx(lr + floor, rel=1e-9)
        if n % 2 == 0:
            assert after[n // 2] == pytest.approx((lr + floor) / 2, rel=1e-9)


def test_each_step_trains_at_the_schedule_s_lr_for_that_step_and_logs_it(base, tmp_path, monkeypatch):
    used, real_update = [], train.update
    monkeypatch.setattr(train, "update", lambda cfg, s, step, loss: used.append(
        (step, [g["lr"] for g in s.optim.param_groups])) or real_update(cfg, s, step, loss))
    out = str(tmp_path / "lr")
    run("sft", "--init", base, "--out", out, "--steps", "4", "--batch_size", "4", "--lr", "1e-3", "--warmup", "2",
        "--min_lr_ratio", "0.2")
    want = [5e-4, 1e-3, 1e-3, 1e-3 * (0.2 + 0.8 * 0.5)]  # warm-up 1/2, 2/2; cosine at t = 0 and t = 1/2
    assert [s for s, _ in used] == [0, 1, 2, 3]
    for (_, lrs), w in zip(used, want):
        assert lrs == [pytest.approx(w, rel=1e-12)] * 2  # both parameter groups (decayed and not)
    logged = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["lr"] for r in logged if "lr" in r] == pytest.approx(want, rel=1e-12)


def by_hand(model, tok, rows):
    """Each (prompt, response) token list alone through the model: the response tokens' log-probs
    after their prefix, and the entropies of the distributions they were drawn from (float64)."""
    lps, ents = [], []
    for prompt, resp in rows:
        seq = torch.tensor([prompt + resp])
        with torch.no_grad():
            logp = torch.log_softmax(model(seq[:, :-1])[0][0].double(), -1)
        for t in range(len(prompt), seq.size(1)):
            lps.append(float(logp[t - 1, seq[0, t]]))
            ents.append(float(-(logp[t - 1].exp() * logp[t - 1]).sum()))
    return lps, ents


def test_sft_step_loss_and_entropy_are_means_over_the_response_tokens_one_sequence_at_a_time(base):
    model = train.model_from_checkpoint(train.load_checkpoint(base)).eval()
    tok = D.Tokenizer()
    probs = D.make_split("train", 4, seed=5, cfg=D.TaskConfig(expert_style="tree"))
    cfg = train.make_config(mode="sft", init=base)
    loss, m = train.step_loss(train.LogProbs(model), tok, cfg, train.expert_groups(tok, probs, 1.0), {}, None, 1,
                              torch.device("cpu"))
    lps, ents = by_hand(model, tok, [(tok.encode(p.prompt), tok.encode(p.expert) + [tok.eos_id]) for p in probs])
    assert m["resp_tokens"] == len(lps)  # every solution token and its end of text, nothing of the prompt
    assert loss.item() == pytest.approx(-sum(lps) / len(lps), abs=1e-5)
    assert m["entropy"] == pytest.approx(sum(ents) / len(ents), abs=1e-5)


def test_evaluate_reports_accuracy_pass_at_k_strict_paths_and_entropy_of_the_completions_it_drew(base, monkeypatch):
    """evaluate on scripted completions (sample replaced), each figure against its count by hand."""
    model = train.model_from_checkpoint(train.load_checkpoint(base)).eval()
    tok = D.Tokenizer()
    cfg = train.make_config(mode="gft", init=base, eval_n=4, passk_problems=3, passk_n=4, kl_n=2, max_new_tokens=48,
                            temperature=0.5)  # a training temperature: pass@k still samples at 1
    splits = train.load_problems(cfg, tok, 96)
    a, b, c = splits["passk"]
    rev = lambda p: D.running_sum(p.operands[::-1])  # another correct path
    S = int(b.answer)
    script = {a.prompt: [a.expert, rev(a), rev(a), D.tree_sum(a.operands)],  # 4 right, 3 distinct paths
              b.prompt: [b.expert, f"{S - 1}+1={S};#### {S}",  # right answer by a wrong trace: verify 1, strict 0
                         f"#### {S + 1}", rev(b).replace(f"#### {S}", f"#### {S + 10}")],  # 2 wrong
              c.prompt: [f"#### {int(c.answer) + 1}"] * 4}  # none right
    assert len({D.solution_path(x) for x in script[a.prompt]}) == 3
    calls = []

    def scripted(model, tok_, prompts, n, temperature, *args, **kw):
        calls.append((n, temperature))
        if temperature == 0.0:  # greedy: every 4th problem of each split wrong, the others right
            texts = [p.expert if j % 4 != 3 else "#### -1" for j, p in enumerate(problems_of[tuple(prompts)])]
        else:
            texts = [t for q in prompts for t in script[q]]
        return [tok.encode(t) + [tok.eos_id] for t in texts], [True] * len(texts)
    problems_of = {tuple(p.prompt for p in splits[s]): splits[s] for s in ("test", "ood", "probe", "easy")}
    monkeypatch.setattr(train, "sample", scripted)
    r = train.evaluate(model, tok, splits, cfg)
    assert calls == [(1, 0.0)] * 4 + [(4, 1.0)]  # greedy test, ood, probe, easy; then pass@k's samples at T = 1
    assert [r[f"acc_{s}"] for s in ("test", "ood", "probe", "easy")] == [0.75] * 4
    assert [(f["prompt"], f["completion"]) for f in r["failures"]] == [(splits["test"][3].prompt, "#### -1")]
    # pass@k per problem from n = 4 samples with c = 4, 2, 0 right: 1 - C(4 - c, k) / C(4, k)
    assert sorted(k for k in r if k.startswith("pass@") and k[5:].isdigit()) == ["pass@1", "pass@2", "pass@4"]
    assert r["pass@1"] == pytest.approx((1 + 2 / 4 + 0) / 3)
    assert r["pass@2"] == pytest.approx((1 + (1 - 1 / 6) + 0) / 3)
    assert r["pass@4"] == pytest.approx((1 + 1 + 0) / 3)
    assert r["pass@1_strict"] == pytest.approx((4 + 1 + 0) / 12)  # the wrong trace does not count
    assert r["paths"] == pytest.approx((3 + 1) / 2)  # distinct right traces, over the problems with one
    rows = [(tok.encode(p.prompt), tok.encode(t) + [tok.eos_id]) for p in (a, b, c) for t in script[p.prompt]]
    _, ents = by_hand(model, tok, rows)
    assert r["entropy"] == pytest.approx(sum(ents) / len(ents), abs=1e-5)


@pytest.mark.parametrize("n_expert,n_teacher", [(1, 3), (2, 1), (0, 0)])
def test_build_groups_gives_each_problem_its_experts_teachers_and_own_rollouts_scored_against_its_answer(
        n_expert, n_teacher):
    tok = D.Tokenizer()
    cfg = train.make_config(mode="gft", init="x.pt", teacher_error=0.5)
    probs = D.make_split("train", 3, seed=2)
    texts = [t for p in probs for t in (p.expert, f"#### {int(p.answer) + 1}")]  # problem-major: right, then wrong
    rollouts = ([tok.encode(t) + [tok.eos_id] for t in texts], [True, False, True, True, True, False])
    groups, info = train.build_groups(tok, probs, cfg, 7, n_expert, n_teacher, rollouts)
    assert info["frac_cut"] == pytest.approx(2 / 6)  # rows cut at max_new_tokens
    rng = train.step_rng(cfg.seed, 7, "teacher")  # this step's teachers, problem by problem
    teachers = [D.teacher_solutions(p, n_teacher, rng, 0.5) for p in probs]
    for g, p, ts, own in zip(groups, probs, teachers, [texts[i:i + 2] for i in range(0, 6, 2)]):
        assert g.prompt == tok.encode(p.prompt)
        want = [("expert", p.expert)] * n_expert + [("teacher", t) for t in ts] + [("rollout", t) for t in own]
        assert [(r.source, r.tokens) for r in g.responses] == [(s, tok.encode(t) + [tok.eos_id]) for s, t in want]
        assert [r.reward for r in g.responses] == [D.verify(t, p.answer) for _, t in want]
        assert [r.reward for r in g.responses if r.source == "rollout"] == [1.0, 0.0]
    if n_teacher:
        again = [g.responses for g in train.build_groups(tok, probs, cfg, 8, n_expert, n_teacher, rollouts)[0]]
        assert again != [g.responses for g in groups]  # another step, other teachers


def test_rollouts_are_a_function_of_seed_and_step_alone(base):
    model = train.model_from_checkpoint(train.load_checkpoint(base)).eval()
    tok = D.Tokenizer()
    probs = D.make_split("train", 2, seed=0)
    cfg = train.make_config(mode="gft", init=base, max_new_tokens=48)
    draws = {(seed, step): train.sample_rollouts(model, tok, probs, dataclasses.replace(cfg, seed=seed), step, 4)[0]
             for seed, step in [(1, 0), (1, 1), (2, 0)]}
    assert draws[1, 0] == train.sample_rollouts(model, tok, probs, dataclasses.replace(cfg, seed=1), 0, 4)[0]
    assert draws[1, 0] != draws[1, 1] and draws[1, 0] != draws[2, 0]  # a step or a seed of its own: other samples


def test_each_rank_draws_its_own_rollouts_and_teachers(base):
    """Under torchrun every rank built its groups from the step's one stream: on the same prompts two
    ranks drew the same rollouts and the same teacher slips, one rank's noise repeated on the others.
    A pool of four copies of one problem gives both ranks the same prompts, so their groups differ
    only by their draws. Each rank's draws are still a function of (seed, step, rank); rank 0 keeps
    the single-process stream (test_build_groups_gives_each_problem_... pins it for teachers)."""
    model = train.model_from_checkpoint(train.load_checkpoint(base)).eval()
    tok = D.Tokenizer()
    pool = D.make_split("train", 1, seed=3) * 4
    cfg = train.make_config(mode="gft", init=base, max_new_tokens=48, prompts_per_step=4, n_rollout=4,
                            n_teacher=3, teacher_error=0.5)

    def drawn(rank, world, source):
        groups, _ = train.step_groups(model, tok, cfg, 5, pool, rank, world)
        return [[r.tokens for r in g.responses if r.source == source] for g in groups]

    for source in ("rollout", "teacher"):
        ranks = [drawn(r, 2, source) for r in (0, 1)]
        assert ranks[0] != ranks[1], source  # the same two prompts on each rank, other draws
        assert ranks[1] == drawn(1, 2, source), source  # reproducible: nothing to save in a checkpoint


def test_kl_to_base_is_the_forward_kl_per_response_token_one_sequence_at_a_time(base):
    ck = train.load_checkpoint(base)
    base_model, model = train.model_from_checkpoint(ck).eval(), train.model_from_checkpoint(ck).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a model that has moved from the base
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    tok = D.Tokenizer()
    probs = D.make_split("test", 3, seed=0) + D.make_split("probe", 2, seed=0)  # of different lengths: padded rows
    total, n = 0.0, 0
    for p in probs:
        seq = torch.tensor([tok.encode(p.prompt) + tok.encode(p.expert) + [tok.eos_id]])
        with torch.no_grad():
            lq = torch.log_softmax(model(seq[:, :-1])[0][0].double(), -1)
            lb = torch.log_softmax(base_model(seq[:, :-1])[0][0].double(), -1)
        for t in range(len(tok.encode(p.prompt)), seq.size(1)):  # the distributions over each response token
            total += float((lb[t - 1].exp() * (lb[t - 1] - lq[t - 1])).sum())
            n += 1
    kl = train.kl_to_base(model, base_model, tok, train.expert_groups(tok, probs))
    assert kl == pytest.approx(total / n, rel=1e-4) and kl > 0


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.integers(1, 40), st.integers(1, 60), st.integers(1, 4), st.integers(0, 10 ** 6))
@example(pool_size=2, n=1, world=1, seed=10 ** 6)  # its first 6 steps all draw prompt 1 (chance 1/32)
@example(pool_size=2, n=3, world=1, seed=0)  # a pool smaller than the draw gave one prompt n times
def test_draw_takes_distinct_prompts_anew_each_step_and_splits_them_between_ranks(pool_size, n, world, seed):
    pool = list(range(pool_size))
    # "anew" and "with replacement" hold by chance, so some seed could break them: over 64 steps, all
    # draws equal has chance <= 2^-63 (>= 2 possible draws) and every draw one prompt n times <= 2^-128
    # (n >= 3 picks from >= 2 prompts); over the < 2.5e9 (pool_size, n, seed) here, < 1e-9 that any
    # fails (over 6 steps, 1 in 32 seeds failed for pool_size 2, n 1: the first example)
    steps = [train.draw(pool, n, seed, step, 0, 1) for step in range(64)]
    for chosen in steps:
        assert len(chosen) == n and set(chosen) <= set(pool)
        if n <= pool_size:
            assert len(set(chosen)) == n  # without replacement while the pool allows
    if n < pool_size:
        assert len({tuple(c) for c in steps}) > 1  # each step draws anew
    if n > pool_size > 1:
        assert any(len(set(c)) > 1 for c in steps)  # with replacement: not one prompt n times
    for step, chosen in enumerate(steps):  # the ranks' shares interleave back into the single process's draw
        shares = [train.draw(pool, n, seed, step, r, world) for r in range(world)]
        assert [shares[i % world][i // world] for i in range(n)] == chosen


@pytest.mark.parametrize("mode,tau,adv_scale", [("gft", 0.0045, True), ("gft", 0.7, False), ("grpo", 0.7, True)])
def test_group_step_loss_and_metrics_equal_the_paper_s_sums_one_sequence_at_a_time(base, mode, tau, adv_scale):
    """GFT: -sum_i A_i sum_t C(p_it) log p_it / tokens; GRPO on-policy (ratio 1): -sum_i A_i |y_i| / tokens;
    A_i = (r_i - mean r) / (sample std r + 1e-6) within each group (or r_i - mean r); DCR's share p < tau."""
    model = train.model_from_checkpoint(train.load_checkpoint(base)).eval()
    tok = D.Tokenizer()
    settings_ = dict(tau=tau) if mode == "gft" else {}
    cfg = train.make_config(mode=mode, init=base, adv_scale=adv_scale, **settings_)
    probs = D.make_split("train", 3, seed=4)
    texts = [t for p in probs[:2] for t in (p.expert, f"#### {int(p.answer) + 1}", f"#### {p.answer}")]
    texts += [probs[2].expert] * 3  # a group whose rollouts are all right (GRPO: all A = 0)
    n_e, n_t = (1, 2) if mode == "gft" else (0, 0)
    groups, info = train.build_groups(tok, probs, cfg, 0, n_e, n_t, ([tok.encode(t) + [tok.eos_id] for t in texts],
                                                                     [True] * 9))
    loss, m = train.step_loss(train.LogProbs(model), tok, cfg, groups, info, None, 1, torch.device("cpu"))
    total, n_tok, below, rewards = 0.0, 0, 0, []
    for g in groups:
        r = [x.reward for x in g.responses]
        rewards += r
        mean, sd = sum(r) / len(r), statistics.stdev(r)
        for x, ri in zip(g.responses, r):
            a = (ri - mean) / (sd + 1e-6) if adv_scale else ri - mean
            lps, _ = by_hand(model, tok, [(g.prompt, x.tokens)])
            for lp in lps:
                c = math.exp(lp) if math.exp(lp) < tau else 1.0
                total += -a * (c * lp if mode == "gft" else 1.0)
                below += math.exp(lp) < tau
            n_tok += len(lps)
    assert len(set(rewards)) == 2  # mixed groups: advantages that are not all zero
    if tau < 0.01:  # the tiny base is near uniform (p ~ 1/258): this tau splits its tokens
        assert 0 < below < n_tok
    assert loss.item() == pytest.approx(total / n_tok, abs=1e-5)
    assert m["reward"] == pytest.approx(sum(rewards) / len(rewards))
    assert m["frac_below_tau"] == (below / n_tok if mode == "gft" else 0.0)  # GRPO rectifies nothing


def test_gate_check_scores_each_of_the_four_samples_against_its_own_problem(base, monkeypatch):
    model = train.model_from_checkpoint(train.load_checkpoint(base)).eval()
    tok = D.Tokenizer()
    probs = D.make_split("val", 3, seed=0)
    right = {p.prompt: k for p, k in zip(probs, (1, 2, 4))}  # of each problem's 4 samples at T = 1
    calls = []

    def scripted(model, tok_, prompts, n, temperature, *args, **kw):
        calls.append((n, temperature))
        texts = ([p.expert] * right[p.prompt] + ["#### 0"] * (4 - right[p.prompt]) for p in probs) if n == 4 else \
            ([p.expert if j == 0 else "#### 0"] for j, p in enumerate(probs))  # greedy: the first problem right
        return [tok.encode(t) + [tok.eos_id] for ts in texts for t in ts], None
    monkeypatch.setattr(train, "sample", scripted)
    cfg = train.make_config(mode="pretrain", gate_n=3)
    g = train.gate_check(model, tok, probs, cfg, 5)
    assert calls == [(4, 1.0), (1, 0.0)]
    assert g == {"val_pass@1": pytest.approx(7 / 12), "val_acc": pytest.approx(1 / 3)}


def test_kl_contexts_are_the_base_s_samples_at_temperature_one_not_its_greedy_path(base):
    model = train.model_from_checkpoint(train.load_checkpoint(base)).eval()
    tok = D.Tokenizer()
    probs = D.make_split("test", 4, seed=0)
    groups = train.base_sample_groups(model, tok, probs, 48)
    greedy, _ = train.sample(model, tok, [p.prompt for p in probs], 1, 0.0, 48, None)
    gen = train.torch_gen(0, 0, "kl", torch.device("cpu"))  # the same fixed stream for every run from this base
    at_one, _ = train.sample(model, tok, [p.prompt for p in probs], 1, 1.0, 48, gen)
    assert [g.prompt for g in groups] == [tok.encode(p.prompt) for p in probs]
    assert [g.responses[0].tokens for g in groups] == at_one != greedy


def test_pretraining_draws_a_new_batch_each_step_reproducibly_from_seed_and_step():
    tok = D.Tokenizer()
    cfg = train.make_config(mode="pretrain", batch_size=16)

    def batch(c, step):
        return [(g.prompt, g.responses[0].tokens) for g in train.step_groups(None, tok, c, step, None, 0, 1)[0]]
    assert batch(cfg, 3) == batch(cfg, 3)
    assert len({str([p for p, _ in batch(cfg, s)]) for s in range(4)}) == 4  # each step its own problems
    assert batch(cfg, 3) != batch(dataclasses.replace(cfg, seed=cfg.seed + 1), 3)


def test_weight_decay_reaches_the_matrices_and_never_the_layer_norm_gains():
    from model import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=258))
    decayed, plain = train.make_optimizer(model, 1e-3, 0.1, beta2=0.99).param_groups
    name = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0 and decayed["betas"] == (0.9, 0.99)
    assert {name[id(p)] for p in plain["params"]} == {n for n in name.values() if ".ln_" in n or n.endswith(
        ("bias", "ln_f.weight"))}
    assert {name[id(p)] for p in decayed["params"]} | {name[id(p)] for p in plain["params"]} == set(name.values())
    assert len(decayed["params"]) + len(plain["params"]) == len(name)  # each parameter in one group, once


@pytest.mark.parametrize("clip", [0.0, 1e-3, 1e6])
def test_update_clips_the_gradient_to_grad_clip_and_returns_its_norm_before(base, clip):
    from types import SimpleNamespace
    model = train.model_from_checkpoint(train.load_checkpoint(base))
    tok = D.Tokenizer()
    cfg = train.make_config(mode="sft", init=base, grad_clip=clip)
    s = SimpleNamespace(model=model, optim=train.make_optimizer(model, 1e-3, 0.0), skipped=0, master=True)
    groups = train.expert_groups(tok, D.make_split("train", 4, seed=1), 1.0)
    loss, _ = train.step_loss(train.LogProbs(model), tok, cfg, groups, {}, None, 1, torch.device("cpu"))
    full = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    before = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in full])))
    gnorm = train.update(cfg, s, 0, loss)
    after = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()])))
    assert gnorm == pytest.approx(before, rel=1e-5)
    assert after == pytest.approx(min(before, clip) if clip > 0 else before, rel=1e-4)  # 0: no clipping


@pytest.mark.parametrize("n,n_test", [(2, 1), (9, 1), (10, 1), (19, 1), (20, 2), (25, 2)])
def test_a_data_file_s_last_tenth_rounded_down_but_at_least_one_record_is_its_test_split(tmp_path, n, n_test):
    path = str(tmp_path / "d.jsonl")
    D.write_jsonl(path, D.make_split("train", n, seed=0), n_teacher=1)
    cfg = train.make_config(mode="eval", init="x.pt", data=path)
    s = train.load_problems(cfg, D.Tokenizer(), 128)
    assert [p.prompt for p in s["train"] + s["test"]] == [p.prompt for p in D.load_jsonl(path)]
    assert len(s["test"]) == n_test


@pytest.fixture(scope="module")
def gft_run(base, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("gft_run") / "r")
    args = ("gft", "--init", base, "--out", out, "--steps", "1", "--prompts_per_step", "2", "--n_rollout", "2")
    run(*args)
    return args


@pytest.mark.parametrize("flag,value", [("--seed", "7"), ("--tau", "0.5"), ("--n_teacher", "2"),
                                        ("--temperature", "0.5"), ("--adv_scale", "false"),
                                        ("--agg", "seq-mean-token-mean"), ("--steps", "2")])
def test_resume_refuses_a_changed_setting_that_shapes_training(gft_run, flag, value):
    with pytest.raises(ValueError, match=rf"--resume with settings that differ .*{flag[2:]}: "):
        run(*gft_run, flag, value, "--resume", "true")
