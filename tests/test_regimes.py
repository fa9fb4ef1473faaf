"""The settings behind reproduction part 2 (README "Three regimes"): the off-policy tree expert and
the generalised strict verifier, SFT(mix), and the official GFT optimiser options."""
import collections
import itertools
import json
import os
import random
import re

import pytest
import torch
from hypothesis import given, settings, strategies as st

import data as D
import train
from test_train import FAST, TINY, run

PROPS = settings(max_examples=80, deadline=None, derandomize=True)
operands = st.lists(st.integers(10, 99), min_size=2, max_size=9)


def reduction_is_right(text, problem):
    """Ground truth for an addition, written apart from data.py: the steps a+b=c are right
    sums, each takes two numbers still unused (operands or earlier results), and one number
    is left at the end, the final answer."""
    body, sep, final = text.rpartition("####")
    if not sep or not body.endswith(";"):
        return False
    unused = collections.Counter(problem.operands)
    for step in body[:-1].split(";"):
        m = re.fullmatch(r"(\d+)\+(\d+)=(\d+)", step)
        if not m or int(m[1]) + int(m[2]) != int(m[3]):
            return False
        a, b, c = int(m[1]), int(m[2]), int(m[3])
        unused[a] -= 1
        unused[b] -= 1
        if unused[a] < 0 or unused[b] < 0:
            return False
        unused[c] += 1
    left = [x for x, n in unused.items() for _ in range(n)]
    return left == [int(final.strip())] if final.strip().isdigit() else False


def random_reduction(xs, rng):
    """Any order and grouping: repeatedly add two numbers at hand, in either order."""
    at_hand, steps = list(xs), []
    while len(at_hand) > 1:
        i, j = rng.sample(range(len(at_hand)), 2)
        a, b = at_hand[i], at_hand[j]
        at_hand = [x for k, x in enumerate(at_hand) if k not in (i, j)] + [a + b]
        steps.append(f"{a}+{b}={a + b};")
    return "".join(steps) + f"#### {at_hand[0]}"


@PROPS
@given(operands)
def test_tree_expert_is_right_and_pairs_neighbours_level_by_level(xs):
    p = D.make_problem(xs, style="tree")
    assert p.expert == D.tree_sum(xs) and p.answer == str(sum(xs))
    assert D.verify(p.expert, p.answer) == 1.0 and D.verify_trace(p.expert, p) == 1.0
    assert reduction_is_right(p.expert, p)
    steps = D.parse_steps(p.expert)[0]
    assert len(steps) == len(xs) - 1
    assert steps[:len(xs) // 2] == [(a, "+", b, a + b) for a, b in zip(xs[0::2], xs[1::2])]  # the first level
    assert (p.expert == D.running_sum(xs)) == (len(xs) <= 3)  # a tree of 2 or 3 is a chain
    assert D.make_problem(xs).expert == D.running_sum(xs)  # the control's expert is unchanged


@PROPS
@given(operands, st.integers(0, 2 ** 32), st.integers(0, 4))
def test_strict_verifier_accepts_every_correct_reduction_and_agrees_with_ground_truth_on_edits(xs, seed, edits):
    rng = random.Random(seed)
    p = D.make_problem(xs)
    text = random_reduction(xs, rng)
    assert D.verify_trace(text, p) == 1.0 and reduction_is_right(text, p)
    for _ in range(edits):  # change digits anywhere: both checks must still agree
        i = rng.choice([k for k, ch in enumerate(text) if ch.isdigit()])
        text = text[:i] + rng.choice("0123456789") + text[i + 1:]
    assert D.verify_trace(text, p) == float(reduction_is_right(text, p)), text


def test_strict_verifier_accepts_a_subtraction_exactly_when_it_runs_left_to_right_to_the_answer():
    for xs in itertools.combinations_with_replacement(range(10, 31, 4), 3):  # every 2-step trace over the numbers
        xs = sorted(xs, reverse=True)
        p = D.make_problem(xs, "-")
        for i, j in itertools.permutations(range(3), 2):
            c = xs[i] - xs[j]
            rest = xs[3 - i - j]
            for u, v in ((rest, c), (c, rest)):
                if c < 0 or u - v < 0:
                    continue  # the step pattern has no minus sign in its numbers
                text = f"{xs[i]}-{xs[j]}={c};{u}-{v}={u - v};#### {u - v}"
                chain = xs[i] == xs[0] and u == c and v == rest and str(u - v) == p.answer
                assert D.verify_trace(text, p) == float(chain), text


def test_digits_change_every_split_but_the_probe():
    cfg = train.make_config(mode="gft", init="x.pt", digits=3, n_prompts=20, eval_n=20)
    s = train.load_problems(cfg, D.Tokenizer(), 128)
    assert all(100 <= x <= 999 for k in ("train", "test", "ood") for p in s[k] for x in p.operands)
    assert all(10 <= x <= 99 for k in ("probe", "easy") for p in s[k] for x in p.operands)
    assert {len(p.operands) for p in s["ood"]} == {5} and {len(p.operands) for p in s["test"]} == {4}


def test_tree_style_reaches_the_fine_tuning_pool_only():
    cfg = train.make_config(mode="gft", init="x.pt", expert_style="tree", n_prompts=20, eval_n=20)
    s = train.load_problems(cfg, D.Tokenizer(), 128)
    assert all(p.expert == D.tree_sum(p.operands) for p in s["train"])
    assert all(p.expert == D.running_sum(p.operands, p.op) for k in ("test", "ood", "probe", "easy") for p in s[k])
    rng = random.Random(0)
    for p in D.make_split("base", 200, seed=0, cfg=D.TaskConfig(expert_style="tree")):
        assert D.pretrain_solution(p, rng, D.TaskConfig()) in \
            {D.running_sum(p.operands, p.op)} | {D.running_sum(o) for o in itertools.permutations(p.operands)}


@pytest.mark.parametrize("settings_,pattern", [
    (dict(mode="sft", batch_size=6, sft_teachers=3), r"--batch_size 6 must be a multiple of 1 \+ --sft_teachers \(4\)"),
    (dict(mode="grpo", updates_per_batch=2), r"--updates_per_batch 2 is for gft only"),
    (dict(mode="gft", prompts_per_step=6, updates_per_batch=4), r"--prompts_per_step 6 must be a multiple of "
                                                                  r"--updates_per_batch 4"),
    (dict(mode="gft", data="x.jsonl", expert_style="tree"), r"--expert_style tree / --digits 2 change the built-in"),
    (dict(mode="gft", data="x.jsonl", digits=3), r"--expert_style chain / --digits 3 change the built-in task"),
    (dict(mode="gft", digits=7), r"--digits 7 is out of range \[1, 6\]"),
    (dict(mode="gft", expert_style="wavy"), r"--expert_style 'wavy' is not allowed; choose one of \('chain', 'tree'\)"),
    (dict(mode="gft", adam_beta2=1.0), r"--adam_beta2 1.0 is out of range"),
    (dict(mode="gft", sft_teachers=3), r"--sft_teachers 3 is for sft/dft"),
    (dict(mode="pretrain", init="", expert_style="tree"), r"--expert_style tree / --digits 2 are fine-tuning settings"),
    (dict(mode="pretrain", init="", digits=3), r"--expert_style chain / --digits 3 are fine-tuning settings"),
])
def test_bad_regime_setting_is_an_error_naming_it(settings_, pattern):
    with pytest.raises(ValueError, match=pattern):
        train.make_config(**{"init": "x.pt", **settings_})


def test_unknown_expert_style_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"expert style 'wavy' is unknown; allowed: \('chain', 'tree'\)"):
        D.make_problem([12, 34], style="wavy")


def test_a_rollout_budget_that_cuts_the_training_solutions_is_an_error(tmp_path):
    base = str(tmp_path / "base")
    run("pretrain", "--out", base, "--steps", "1", "--batch_size", "4", *TINY)
    with pytest.raises(ValueError, match=r"--max_new_tokens 40 cuts \d+ built-in train solution\(s\) such as"):
        train.main(["gft", "--init", os.path.join(base, "ckpt.pt"), "--out", str(tmp_path / "g"), "--digits", "3",
                    *FAST[:-2], "--max_new_tokens", "40"])


def test_updates_per_batch_that_do_not_divide_each_process_groups_are_an_error(monkeypatch):
    monkeypatch.setattr(train, "setup_distributed", lambda cfg: (0, 2, torch.device("cpu")))
    cfg = train.make_config(mode="gft", init="x.pt", prompts_per_step=4, updates_per_batch=4)
    with pytest.raises(ValueError, match=r"--prompts_per_step 4 must be a multiple of 2 processes x "
                                         r"--updates_per_batch 4"):
        train.set_up(cfg)


def test_sft_mix_takes_a_data_record_s_right_teachers_only():
    p = D.Problem(prompt="Q:2+3=", answer="5", expert="2+3=5;#### 5",
                  teachers=("#### 5", "#### 6", "3+2=5;#### 5", "#### 7", "5;#### 5"))
    cfg = train.make_config(mode="sft", init="x.pt", batch_size=4, sft_teachers=3)
    tok = D.Tokenizer()
    for step in range(20):
        groups, _ = train.build_groups(tok, [p], cfg, step, 1, 3, correct_only=True)
        texts = [tok.decode_response(r.tokens) for r in groups[0].responses]
        assert len(texts) == 4 and all(D.verify(t, "5") == 1.0 for t in texts), texts


def test_sft_mix_step_holds_batch_size_right_demonstrations_one_expert_per_prompt():
    cfg = train.make_config(mode="sft", init="x.pt", batch_size=12, sft_teachers=3, expert_style="tree", n_prompts=50)
    cfg.teacher_error = 0.5  # not a setting of sft (READ_BY): set past the check, to show the step ignores it
    tok = D.Tokenizer()
    pool = train.load_problems(cfg, tok, 128)["train"]
    for step in range(5):
        groups, _ = train.step_groups(None, tok, cfg, step, pool, 0, 1)
        assert len(groups) == 3 and sum(len(g.responses) for g in groups) == 12
        for g in groups:
            p = next(q for q in pool if tok.encode(q.prompt) == g.prompt)
            texts = [tok.decode_response(r.tokens) for r in g.responses]
            assert [r.source for r in g.responses] == ["expert", "teacher", "teacher", "teacher"]
            assert texts[0] == p.expert
            assert all(D.verify_trace(t, p) == 1.0 for t in texts)


def test_gft_with_several_updates_per_batch_takes_that_many_optimiser_steps(tmp_path):
    base = str(tmp_path / "base")
    run("pretrain", "--out", base, "--steps", "2", "--batch_size", "4", *TINY)
    out = str(tmp_path / "gft")
    run("gft", "--init", os.path.join(base, "ckpt.pt"), "--out", out, "--steps", "2", "--prompts_per_step", "4",
        "--n_rollout", "2", "--updates_per_batch", "2", "--weight_decay", "0.01", "--adam_beta2", "0.999",
        "--schedule", "constant", "--warmup", "0")
    ck = train.load_checkpoint(os.path.join(out, "ckpt.pt"))
    opt = ck["optimizer"]
    assert {float(s["step"]) for s in opt["state"].values()} == {4.0}  # 2 batches x 2 updates
    assert all(g["betas"] == (0.9, 0.999) for g in opt["param_groups"])
    with open(os.path.join(out, "metrics.jsonl")) as f:
        logged = [json.loads(l) for l in f if '"loss"' in l]
    assert [r["step"] for r in logged] == [1, 2] and all(torch.isfinite(torch.tensor(r["loss"])) for r in logged)


def test_resume_of_a_checkpoint_older_than_a_setting_reads_the_setting_as_its_default(tmp_path):
    base = str(tmp_path / "base")
    run("pretrain", "--out", base, "--steps", "2", "--batch_size", "4", *TINY)
    out = str(tmp_path / "sft")
    run("sft", "--init", os.path.join(base, "ckpt.pt"), "--out", out, "--steps", "2", "--batch_size", "4")
    path = os.path.join(out, "ckpt.pt")
    ck = train.load_checkpoint(path)
    for k in ("expert_style", "sft_teachers", "adam_beta2", "updates_per_batch"):
        del ck["config"][k]  # as written before these settings existed
    train.save_checkpoint(path, **ck)
    run("sft", "--init", os.path.join(base, "ckpt.pt"), "--out", out, "--steps", "2", "--batch_size", "4",
        "--resume", "true")  # the same settings: no "differ" error
    with pytest.raises(ValueError, match=r"sft_teachers: 0 -> 1"):  # a setting given: compared with its default
        run("sft", "--init", os.path.join(base, "ckpt.pt"), "--out", out, "--steps", "2", "--batch_size", "4",
            "--resume", "true", "--sft_teachers", "1")


def test_each_update_of_a_batch_trains_on_the_next_slice_of_its_groups_and_the_log_sums_their_tokens(tmp_path,
                                                                                                 monkeypatch):
    base = str(tmp_path / "base")
    run("pretrain", "--out", base, "--steps", "1", "--batch_size", "4", *TINY)
    slices, real = [], train.step_loss

    def spy(logprob_fn, tok, cfg, groups, *a):
        loss, m = real(logprob_fn, tok, cfg, groups, *a)
        slices.append(([g.prompt for g in groups], m["tokens"]))
        return loss, m
    monkeypatch.setattr(train, "step_loss", spy)
    drawn, real_groups = [], train.step_groups
    monkeypatch.setattr(train, "step_groups", lambda *a: drawn.append(real_groups(*a)) or drawn[-1])
    out = str(tmp_path / "gft")
    run("gft", "--init", os.path.join(base, "ckpt.pt"), "--out", out, "--steps", "1", "--prompts_per_step", "6",
        "--n_rollout", "2", "--updates_per_batch", "3")
    (groups, _), = drawn
    assert [p for p, _ in slices] == [[g.prompt for g in groups[i:i + 2]] for i in (0, 2, 4)]  # 3 updates, 2 each
    with open(os.path.join(out, "metrics.jsonl")) as f:
        row, = [json.loads(l) for l in f if '"loss"' in l]
    assert row["tokens"] == sum(t for _, t in slices)  # tokens of the whole batch (tok/s counts them all)
