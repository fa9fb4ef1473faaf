"""Properties of data.py: the tokenizer, the task and its splits, the verifier, the JSONL loader.

Everything here is CPU-only, offline and seeded; hypothesis runs derandomized.
"""
import collections
import itertools
import json
import os
import random
import re

import pytest
import tiktoken
from hypothesis import given, settings, strategies as st

import data
from data import (EOT, PAD, SPLITS, Problem, TaskConfig, Tokenizer, bucket, load_jsonl,
                  make_problem, make_split, solution_order, teacher_solutions, verify,
                  verify_trace, write_jsonl)

DATA_DIR = os.path.join(os.path.dirname(__file__), "..", "data")
FAST = settings(max_examples=60, deadline=None, derandomize=True)
TOK = Tokenizer()


def trace_is_right(text, problem):
    """Ground truth, written independently of data.py: every step a <op> b = c is correct
    arithmetic, each step starts from the previous result, the operands are used exactly
    once each, and the final answer is the last result."""
    body, sep, final = text.rpartition("####")
    if not sep or not body.endswith(";"):
        return False
    acc, used = None, []
    for step in body[:-1].split(";"):
        m = re.fullmatch(r"(-?\d+)([+-])(-?\d+)=(-?\d+)", step)
        if not m or m[2] != problem.op:
            return False
        a, b, c = int(m[1]), int(m[3]), int(m[4])
        if acc is None:
            used.append(a)
        elif a != acc:
            return False
        used.append(b)
        if c != (a + b if problem.op == "+" else a - b):
            return False
        acc = c
    return sorted(used) == sorted(problem.operands) and final.strip() == str(acc)


# ----------------------------------------------------------------------------- tokenizer

text_with_specials = st.lists(st.one_of(st.text(), st.sampled_from([EOT, PAD]))).map("".join)


@FAST
@given(text_with_specials)
def test_tokenizer_round_trips_any_text_and_encodes_special_strings_as_plain_bytes(text):
    ids = TOK.encode(text)
    assert TOK.decode(ids) == text
    assert ids == list(text.encode("utf-8"))  # one token per byte, never a special id


def test_special_ids_decode_to_their_strings_and_vocab_is_258():
    assert (TOK.eos_id, TOK.pad_id, TOK.vocab_size) == (256, 257, 258)
    assert TOK.decode([TOK.eos_id]) == EOT
    assert TOK.decode([TOK.pad_id]) == PAD
    assert TOK.decode(TOK.encode("a") + [256, 257] + TOK.encode("b")) == "a" + EOT + PAD + "b"


@FAST
@given(text_with_specials, text_with_specials)
def test_decode_response_stops_at_first_eos(head, tail):
    ids = TOK.encode(head) + [TOK.eos_id] + TOK.encode(tail) + [TOK.eos_id, TOK.pad_id]
    assert TOK.decode_response(ids) == head
    assert TOK.decode_response(TOK.encode(head)) == head  # no eos: everything


def test_decode_turns_a_cut_off_multibyte_character_into_the_replacement_character():
    """The docstring's promise: invalid UTF-8 (a sampled byte sequence that stops mid-character)
    decodes to U+FFFD, never silently to nothing and never an exception."""
    euro = TOK.encode("€")  # three bytes
    assert len(euro) == 3
    for cut in (1, 2):
        text = TOK.decode(TOK.encode("a") + euro[:cut] + TOK.encode("b"))
        assert text.startswith("a") and text.endswith("b") and "\ufffd" in text, text
    assert TOK.decode_response(euro[:2] + [TOK.eos_id] + euro).count("\ufffd") >= 1


def test_unknown_tokenizer_name_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="no-such-encoding"):
        Tokenizer("no-such-encoding")


def test_tiktoken_encoding_that_cannot_load_offline_raises_runtime_error(monkeypatch):
    def offline(name):
        raise ConnectionError(f"cannot reach the server for {name}")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(RuntimeError, match=r"'gpt2' could not be loaded.*offline") as err:
        Tokenizer("gpt2")
    assert isinstance(err.value.__cause__, ConnectionError)


# ----------------------------------------------------------------------------- verifier

@pytest.mark.parametrize("split", SPLITS)
def test_every_expert_solution_verifies(split):
    for p in make_split(split, 200, seed=1):
        assert verify(p.expert, p.answer) == 1.0, p
        assert verify_trace(p.expert, p) == 1.0, p
        assert trace_is_right(p.expert, p), p


@pytest.mark.parametrize("split", SPLITS)
def test_teachers_verify_exactly_when_their_trace_is_right(split):
    rng = random.Random(2)
    for p in make_split(split, 150, seed=2):
        for t in teacher_solutions(p, 6, rng, error_rate=0.25):
            right = trace_is_right(t, p)
            assert verify(t, p.answer) == float(right), (p.prompt, t)
            assert verify_trace(t, p) == float(right), (p.prompt, t)


@pytest.mark.parametrize("split", SPLITS)
def test_teachers_without_errors_are_right_permutations_and_with_errors_all_wrong(split):
    rng = random.Random(3)
    for p in make_split(split, 100, seed=3):
        for t in teacher_solutions(p, 5, rng, error_rate=0.0):
            assert verify(t, p.answer) == 1.0 and verify_trace(t, p) == 1.0, (p.prompt, t)
            assert sorted(solution_order(t)) == sorted(p.operands)
            if p.op == "-":  # only the subtrahends may move
                assert solution_order(t)[0] == p.operands[0]
        for t in teacher_solutions(p, 5, rng, error_rate=1.0):
            assert verify(t, p.answer) == 0.0 and verify_trace(t, p) == 0.0, (p.prompt, t)


def test_observed_teacher_error_rate_matches_error_rate():
    rng = random.Random(4)
    problems = make_split("train", 500, seed=4)
    scores = [verify(t, p.answer) for p in problems for t in teacher_solutions(p, 8, rng, 0.25)]
    wrong = 1 - sum(scores) / len(scores)  # 4000 samples: standard error 0.007
    assert abs(wrong - 0.25) < 0.03, wrong


def test_teacher_solutions_of_real_data_sample_fixed_teachers_without_replacement():
    p = Problem(prompt="q", answer="1", expert="#### 1", teachers=("a", "b", "c"))
    rng = random.Random(0)
    two = teacher_solutions(p, 2, rng)
    assert len(two) == 2 and len(set(two)) == 2 and set(two) <= {"a", "b", "c"}
    assert sorted(teacher_solutions(p, 5, rng)) == ["a", "b", "c"]  # fewer if the record has fewer
    with pytest.raises(ValueError, match="n"):
        teacher_solutions(p, -1, rng)


@FAST
@given(st.integers(0, 10**6), st.integers(1, 10**6))
def test_corrupted_final_answer_verifies_to_zero(seed, shift):
    p = make_split("train", 1, seed=seed % 50)[0]
    body, _, final = p.expert.rpartition("#### ")
    wrong = body + "#### " + str(int(final) + shift)
    assert verify(wrong, p.answer) == 0.0
    assert verify_trace(wrong, p) == 0.0


def test_verifier_reads_the_last_answer_with_commas_and_dollar_signs():
    assert verify("#### 1,234", "1234") == 1.0
    assert verify("so #### $ 72", "72") == 1.0
    assert verify("#### 5 then #### 6", "6") == 1.0 and verify("#### 5 then #### 6", "5") == 0.0
    assert verify("#### 0.50", "0.5") == 1.0
    assert verify("72", "72") == 0.0  # no '####': no answer


anything = st.one_of(st.none(), st.integers(), st.floats(), st.text(), st.binary(),
                     st.lists(st.text(max_size=3), max_size=3),
                     st.text(alphabet="#$-,.0123456789 ;+=").map(lambda s: s + "####" + s))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(anything, anything)
def test_verify_never_raises_and_returns_zero_or_one(completion, answer):
    assert verify(completion, answer) in (0.0, 1.0)


@pytest.mark.parametrize("completion,score", [
    ("#### 147", 1.0), ("#### 1,47", 1.0), ("####147", 1.0), ("#### $147", 1.0), ("#### 146 #### 147", 1.0),
    ("#### 147 #### 146", 0.0), ("#### 147abc", 1.0), ("#### 147 or 148", 1.0), ("#### 147/2", 1.0),
    ("#### 147.0", 1.0), ("#### -147", 0.0), ("147", 0.0), ("#### abc", 0.0),
])
def test_verify_reads_the_number_after_the_last_marker_and_nothing_after_it(completion, score):
    """What the rule-based reward accepts, pinned: the number right after the last '####', as the
    official code's GSM8K scorer (verl's, strict) reads it. Text after that number is not read, so
    '#### 147 or 148' and '#### 147/2' pass for 147: a stricter checker is data.verify's to make."""
    assert verify(completion, "147") == score


@FAST
@given(anything)
def test_verify_trace_never_raises_and_returns_zero_or_one(completion):
    assert verify_trace(completion, make_problem([23, 45, 12, 67])) in (0.0, 1.0)


def test_verify_trace_rejects_right_answer_from_wrong_trace_that_verify_accepts():
    p = make_problem([23, 45, 12, 67])  # answer 147
    cases = [
        "23+46=69;69+11=80;80+67=147;#### 147",  # 45 miscopied as 46, compensated by 12 -> 11
        "23+45=68;68+12=81;81+67=147;#### 147",  # a step off by +1 and another off by -1
        "23+45=68;68+79=147;#### 147",  # two operands merged into one step
        "23+45=68;68+12=80;80+67=147;147+0=147;#### 147",  # an extra operand
        "23+45=68;70+10=80;80+67=147;#### 147",  # a step that does not continue the chain
        "23+45=68;69+12=81;80+67=147;#### 147",  # the chain broken twice, every operand used once
        "67+80=147;#### 147",  # skipped work
    ]
    for text in cases:
        assert verify(text, p.answer) == 1.0, text
        assert verify_trace(text, p) == 0.0, text
    with pytest.raises(ValueError, match="synthetic"):
        verify_trace(p.expert, Problem(prompt="q", answer="1", expert="#### 1"))


@pytest.mark.parametrize("text,why", [
    ("23+45=68x;68+12=80;80+67=147;#### 147", "junk after a step"),
    ("23+45=68;68+12=80;80+67=1470;#### 147", "a wrong last result"),
])
def test_verify_trace_rejects_malformed_steps(text, why):
    p = make_problem([23, 45, 12, 67])
    assert verify_trace(text, p) == 0.0, why


def test_verify_trace_uses_every_operand_once_and_only_the_problem_s_operation():
    """With a zero operand, a trace that skips it or that subtracts where the problem adds reaches
    the right number: the strict check still refuses both (each operand used once, the problem's op)."""
    assert verify_trace("5+3=8;#### 8", make_problem([5, 0, 3])) == 0.0  # the 0 left unused
    assert verify_trace("5+0=5;5+3=8;#### 8", make_problem([5, 0, 3])) == 1.0
    assert verify_trace("5-0=5;#### 5", make_problem([5, 0])) == 0.0  # a difference for a sum
    assert verify_trace("1+1=2;2-2=0;#### 0", make_problem([2, 1, 1], "-")) == 0.0  # a sum inside a difference
    assert verify_trace("2-1=1;1-1=0;#### 0", make_problem([2, 1, 1], "-")) == 1.0
    assert verify_trace("3-1=2;1-0=1;2-1=1;#### 1", make_problem([3, 1, 1, 0], "-")) == 0.0  # 3-1-(1-0): regrouped
    assert verify_trace("3-1=2;2-1=1;1-0=1;#### 1", make_problem([3, 1, 1, 0], "-")) == 1.0


# ----------------------------------------------------------------------------- task and splits

def test_typical_problems_have_several_distinct_correct_teacher_paths():
    rng = random.Random(5)
    problems = make_split("train", 200, seed=5)
    many = 0
    for p in problems:
        right = [t for t in teacher_solutions(p, 8, rng) if verify_trace(t, p) == 1.0]
        many += len({solution_order(t) for t in right}) >= 2
    assert many >= 0.95 * len(problems), many


def classify_slip(text, problem):
    """Which slip a wrong teacher carries, read from its text apart from data.py: ("copy", position, None)
    when every step is right arithmetic but one operand was miscopied (same number of digits, one digit
    changed); ("carry", step, delta) when the operands are the problem's and exactly one step's result
    is off by delta, the later steps computed from it. None for anything else."""
    body, sep, final = text.rpartition("#### ")
    if not sep or not body.endswith(";"):
        return None
    steps = [re.fullmatch(r"(-?\d+)([+-])(-?\d+)=(-?\d+)", s) for s in body[:-1].split(";")]
    if not all(steps) or any(m[2] != problem.op for m in steps):
        return None
    steps = [(int(m[1]), int(m[3]), int(m[4])) for m in steps]
    if any(steps[i][0] != steps[i - 1][2] for i in range(1, len(steps))) or final != str(steps[-1][2]):
        return None  # not a chain: every slip is written as a running sum
    used = [steps[0][0]] + [b for _, b, _ in steps]
    off = [(i, c - (a + b if problem.op == "+" else a - b)) for i, (a, b, c) in enumerate(steps)]
    off = [(i, d) for i, d in off if d]
    if problem.op == "-" and sorted(used[1:]) != sorted(problem.operands[1:]) and used[0] != problem.operands[0]:
        return None  # a difference keeps its first operand first (unless that one was miscopied)
    if not off:
        extra, missing = collections.Counter(used) - collections.Counter(problem.operands), \
            collections.Counter(problem.operands) - collections.Counter(used)
        if sum(extra.values()) != 1 or sum(missing.values()) != 1:
            return None
        new, old = str(next(iter(extra))), str(next(iter(missing)))
        if len(new) != len(old) or sum(u != v for u, v in zip(new, old)) != 1:
            return None
        return ("copy", used.index(int(new)), None)
    if len(off) == 1 and sorted(used) == sorted(problem.operands) and off[0][1] in (-10, -1, 1, 10):
        return ("carry", off[0][0], off[0][1])
    return None


@pytest.mark.parametrize("split", ["train", "ood", "probe"])
def test_every_slip_is_one_miscopied_digit_or_one_carry_and_both_kinds_occur_everywhere(split):
    """_slip's promise: a miscopied operand digit or a partial result off by 1 or 10, propagated.
    Every wrong teacher is exactly one of those; half are each kind; the copy slip hits every
    operand position and the carry slip every step, with every delta; a carry slip never writes a
    negative partial result."""
    rng = random.Random(15)
    problems = make_split(split, 300, seed=15)
    kinds = [(p, t, classify_slip(t, p)) for p in problems for t in teacher_solutions(p, 4, rng, 1.0)]
    assert all(k is not None for _, _, k in kinds), next((p.prompt, t) for p, t, k in kinds if k is None)
    n_ops = len(problems[0].operands)
    copy = collections.Counter(pos for _, _, (kind, pos, _) in kinds if kind == "copy")
    carry = collections.Counter((pos, d) for _, _, (kind, pos, d) in kinds if kind == "carry")
    assert abs(sum(copy.values()) / len(kinds) - 0.5) < 0.05, copy  # 1200 slips: standard error 0.015
    assert set(copy) == set(range(n_ops)), copy
    assert {pos for pos, _ in carry} == set(range(n_ops - 1)), carry
    assert {d for _, d in carry} == {-10, -1, 1, 10}, carry
    for p, t, (kind, _, _) in kinds:
        if kind == "carry":
            assert "=-" not in t, (p.prompt, t)


def test_wrong_teachers_take_random_orders_too():
    """Each teacher solution takes a random operand order, the wrong ones included: a slipped
    teacher written in the canonical order (position for position, up to the slipped operand)
    is as rare as a right one in that order (1 in 24 for 4 distinct operands)."""
    rng = random.Random(16)
    problems = [p for p in make_split("train", 300, seed=16) if len(set(p.operands)) == 4]
    wrong = [(p, t) for p in problems for t in teacher_solutions(p, 4, rng, 1.0)]
    canonical = sum(sum(x == y for x, y in zip(solution_order(t), p.operands)) >= 3 for p, t in wrong)
    assert canonical / len(wrong) < 0.1, canonical / len(wrong)


@pytest.mark.parametrize("cfg", [TaskConfig(), TaskConfig(train_ops=3, ood_ops=6)])
def test_splits_are_disjoint(cfg):
    prompts = {s: {p.prompt for p in make_split(s, 300, seed=0, cfg=cfg)} for s in SPLITS}
    for i, a in enumerate(SPLITS):
        assert len(prompts[a]) == 300  # distinct within a split
        for b in SPLITS[i + 1:]:
            assert not prompts[a] & prompts[b], (a, b)


def test_both_probes_hold_1000_problems_and_the_easy_one_refuses_to_overlap_the_task():
    for split in ("probe", "easy"):
        assert len({p.prompt for p in make_split(split, 1000, seed=0)}) == 1000
    assert len(make_split("probe", 1701)) == 1701  # train.py's --eval_n ceiling: every difference held out
    for cfg in (TaskConfig(train_ops=2), TaskConfig(ood_ops=2)):
        with pytest.raises(ValueError, match="'easy'.*2-operand sums"):
            make_split("easy", 10, cfg=cfg)


@pytest.mark.parametrize("split", SPLITS)
def test_splits_are_reproducible_from_seed(split):
    assert make_split(split, 50, seed=7) == make_split(split, 50, seed=7)
    assert [p.prompt for p in make_split(split, 50, seed=7)] != [p.prompt for p in make_split(split, 50, seed=8)]


@pytest.mark.parametrize("cfg", [TaskConfig(), TaskConfig(digits=3, train_ops=3, ood_ops=6)])
def test_make_split_has_documented_operand_counts_and_ops(cfg):
    lo, hi = 10 ** (cfg.digits - 1), 10 ** cfg.digits - 1
    want = {"train": {(cfg.train_ops, "+")}, "val": {(cfg.train_ops, "+")},
            "test": {(cfg.train_ops, "+")}, "ood": {(cfg.ood_ops, "+")}, "probe": {(2, "-")}, "easy": {(2, "+")},
            "base": {(k, "+") for k in cfg.base_mix} | {(2, "-")}}
    for split in SPLITS:
        problems = make_split(split, 300, seed=0, cfg=cfg)
        kinds = collections.Counter((len(p.operands), p.op) for p in problems)
        assert set(kinds) <= want[split], (split, kinds)
        for p in problems:
            assert all(lo <= x <= hi for x in p.operands), p
            assert p.prompt == "Q:" + p.op.join(map(str, p.operands)) + "="
            if p.op == "-":
                assert p.operands[0] >= p.operands[1]  # never a negative answer
        if split == "base":  # every family of the pretraining mix is present
            assert set(kinds) == want["base"], kinds
            probe_share = kinds[(2, "-")] / len(problems)
            assert abs(probe_share - cfg.probe_share) < 0.06, probe_share


def test_invalid_split_and_task_settings_raise_naming_them():
    with pytest.raises(ValueError, match="'nope'"):
        make_split("nope", 3)
    with pytest.raises(ValueError, match=">= 1"):
        make_split("train", 0)
    with pytest.raises(ValueError, match="train_ops"):
        TaskConfig(train_ops=1)
    with pytest.raises(ValueError, match="probe_share"):
        TaskConfig(probe_share=1.5)
    with pytest.raises(ValueError, match="fewer than"):
        make_split("probe", 500, cfg=TaskConfig(digits=1))  # only 45 such problems exist


@pytest.mark.parametrize("name,n", [("train", 100_000), ("test", 2_000)])
def test_a_used_up_split_fails_after_few_draws_and_a_full_one_is_still_found(monkeypatch, name, n):
    """--n_prompts 100000 at 1 digit used to draw 1000 n = 10^8 problems (minutes) before saying
    the split is too small; it stops once draws stop finding new ones. Exactly the split's size
    is still found: every distinct problem, as before."""
    cfg = TaskConfig(digits=1, train_ops=3, ood_ops=4)
    real, calls = data._random_problem, [0]

    def counted(*a, **k):
        calls[0] += 1
        return real(*a, **k)
    monkeypatch.setattr(data, "_random_problem", counted)
    with pytest.raises(ValueError, match=f"split '{name}' has fewer than {n} distinct problems"):
        make_split(name, n, cfg=cfg)
    assert calls[0] < 1_000_000
    rng = random.Random(0)  # every 3-operand sum of 1-digit numbers (9^3 = 729): 10^5 draws miss none
    every = {real(rng, 3, cfg).prompt for _ in range(100_000)}
    size = sum(bucket(q) in data._BUCKETS[name] for q in every)
    assert len(every) == 729 and len(make_split(name, size, cfg=cfg)) == size  # the whole split, found


@pytest.mark.parametrize("split", ["train", "val", "test", "ood", "probe", "easy", "base"])
def test_operands_are_drawn_from_the_whole_digit_range(split):
    """2-digit operands are every number in [10, 99]: both ends are reached (an off-by-one in the
    range would drop 10 or 99 and, for the probes, the problems that use them)."""
    values = collections.Counter(x for p in make_split(split, 400, seed=11) for x in p.operands)
    assert set(values) == set(range(10, 100)), sorted(set(range(10, 100)) - set(values))


@pytest.mark.parametrize("mix", [TaskConfig().base_mix, {3: 1.0, 6: 3.0}])
def test_base_operand_counts_follow_the_base_mix_weights(mix):
    """Pretraining's sums take their operand count from base_mix, in proportion to its weights
    (the weights are what makes 4- and 5-operand problems frequent enough for the base)."""
    cfg = TaskConfig(base_mix=mix)
    sums = [p for p in make_split("base", 4000, seed=12, cfg=cfg) if p.op == "+"]
    counts = collections.Counter(len(p.operands) for p in sums)
    total = sum(mix.values())
    for k, w in mix.items():  # ~3600 sums: standard error <= 0.009
        assert abs(counts[k] / len(sums) - w / total) < 0.04, (k, counts)
    assert set(counts) == set(mix)


def test_splits_of_one_family_occupy_disjoint_buckets_and_base_shares_none():
    """Splits are disjoint by construction (a problem's bucket is a hash of its prompt), not by luck:
    with 65M possible 4-operand sums two random draws of 300 never meet, so the sets of buckets are
    what is compared. train, val and test draw the same problems and must not share a bucket; base
    (which holds every family) shares a bucket with no other split."""
    seen = {s: {bucket(p.prompt) for p in make_split(s, 300, seed=13)} for s in SPLITS}
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")] + [("base", s) for s in SPLITS[1:]]:
        assert not seen[a] & seen[b], (a, b, seen[a], seen[b])
    assert set().union(*seen.values()) == set(range(10))


def test_whole_splits_of_a_small_task_are_disjoint():
    """With 1-digit operands there are 9^3 = 729 three-operand sums: each split asked for all of its
    problems must still share none with another (a bucket range that overlaps would show here)."""
    cfg = TaskConfig(digits=1, train_ops=3, ood_ops=4)
    every = ["Q:" + "+".join(map(str, xs)) + "=" for xs in itertools.product(range(1, 10), repeat=3)]
    full = {}
    for s in ("train", "val", "test"):
        size = sum(bucket(q) in data._BUCKETS[s] for q in every)
        full[s] = {p.prompt for p in make_split(s, size, cfg=cfg)}
        assert len(full[s]) == size
    assert not full["train"] & full["val"] and not full["train"] & full["test"] and not full["val"] & full["test"]
    assert len(full["train"] | full["val"] | full["test"]) < len(every)  # the base buckets keep the rest


@pytest.mark.parametrize("kwargs,name", [
    (dict(base_mix={1: 1.0}), "base_mix"), (dict(base_mix={}), "base_mix"), (dict(base_mix={3: -1.0}), "base_mix"),
    (dict(base_mix={3: 0.0}), "base_mix"), (dict(expert_style="wavy"), "expert_style"), (dict(digits=0), "digits"),
    (dict(digits=7), "digits"), (dict(ood_ops=10), "ood_ops"), (dict(shuffle_share=-0.1), "shuffle_share"),
])
def test_invalid_task_config_raises_naming_the_setting(kwargs, name):
    with pytest.raises(ValueError, match=f"TaskConfig.{name}"):
        TaskConfig(**kwargs)


def tree_steps(xs):
    """The tree expert's steps, from a formula rather than a loop over levels: at level L (blocks of
    2^L operands, aligned from the left), step j adds block 2j to block 2j + 1 whenever block 2j + 1
    is not empty. An odd one out is a short last block, so it moves up as it is."""
    out, size = [], 1
    while size < len(xs):
        for start in range(0, len(xs), 2 * size):
            left, right = xs[start:start + size], xs[start + size:start + 2 * size]
            if right:
                out.append((sum(left), "+", sum(right), sum(left) + sum(right)))
        size *= 2
    return out


@FAST
@given(st.lists(st.integers(10, 99), min_size=2, max_size=9))
def test_tree_expert_adds_aligned_neighbouring_blocks_at_every_level(xs):
    """Every level of the tree, not only the first, pairs neighbours: checked against tree_steps."""
    p = make_problem(xs, style="tree")
    assert data.parse_steps(p.expert) == (tree_steps(xs), str(sum(xs)))


def test_tree_style_leaves_a_subtraction_a_running_difference():
    """A difference has no regrouping, so the tree style writes the chain (data.tree_sum's docstring);
    the probe family under the tree style still has right, strictly verified experts."""
    cfg = TaskConfig(expert_style="tree")
    for p in make_split("probe", 200, seed=14, cfg=cfg):
        assert p.expert == data.running_sum(p.operands, "-") and verify_trace(p.expert, p) == 1.0
    assert make_problem([90, 20, 10, 5], "-", style="tree").expert == "90-20=70;70-10=60;60-5=55;#### 55"

# ----------------------------------------------------------------------------- JSONL

def test_shipped_example_jsonl_loads_and_experts_verify():
    problems = load_jsonl(os.path.join(DATA_DIR, "example.jsonl"), TOK, 128)
    assert len(problems) == 50
    for p in problems:
        assert verify(p.expert, p.answer) == 1.0 and len(p.teachers) == 3


def test_shipped_example_jsonl_is_exactly_what_python_data_py_writes(tmp_path):
    """`python data.py` regenerates data/example.jsonl; the committed results are built on the same
    draws (each split's seed stream, the operand ranges, the teachers' orders and slips). Any change
    to what the generator draws changes this file, so it is pinned byte for byte."""
    path = tmp_path / "example.jsonl"
    write_jsonl(str(path), make_split("train", 50))
    with open(os.path.join(DATA_DIR, "example.jsonl"), "rb") as f:
        assert path.read_bytes() == f.read()


def test_gsm8k_sample_loads_and_every_solution_verifies(capsys):
    problems = load_jsonl(os.path.join(DATA_DIR, "gsm8k_sample.jsonl"))
    assert len(problems) == 200
    assert capsys.readouterr().out == ""  # no expert fails the verifier
    for p in problems:
        assert verify(p.expert, p.answer) == 1.0, p.prompt
        assert len(p.teachers) >= 1
        for t in p.teachers:
            assert verify(t, p.answer) == 1.0, p.prompt
        assert teacher_solutions(p, 4, random.Random(0)) == list(p.teachers)


GOOD = {"prompt": "Q:1+2=", "answer": "3", "expert": "1+2=3;#### 3", "teachers": ["2+1=3;#### 3"]}


DROP = object()  # line(expert=DROP): a record without that field


def line(**changes):
    rec = dict(GOOD, **changes)
    for k in [k for k, v in rec.items() if v is DROP]:
        del rec[k]
    return json.dumps(rec).encode()


BAD_FILES = {  # name: (file bytes, bad line number, words the message must contain)
    "empty": (b"", None, "empty"),
    "whitespace only": (b"\n  \n", None, "empty"),
    "malformed json": (line() + b"\n" + b'{"prompt": "Q:1+2=", ' + b"\n", 2, "malformed JSON"),
    "blank line in the middle": (line() + b"\n\n" + line() + b"\n", 2, "blank line"),
    "not an object": (line() + b"\n[1, 2]\n", 2, "JSON object"),
    "missing field": (line() + b"\n" + line(expert=DROP) + b"\n", 2, "missing field 'expert'"),
    "wrong type": (line(answer=3) + b"\n", 1, "'answer' must be str"),
    "teachers not a list": (line(teachers="2+1=3;#### 3") + b"\n", 1, "'teachers' must be list"),
    "teachers not strings": (line() + b"\n" + line(teachers=["ok", 7]) + b"\n", 2, "list of strings"),
    "empty prompt": (line(prompt="") + b"\n", 1, "non-empty"),
    "empty expert": (line() + b"\n" + line(expert="") + b"\n", 2, "non-empty"),
    "not utf-8": (line() + b"\n" + line()[:-2] + b'\xff"}' + b"\n", 2, "UTF-8"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_jsonl_raises_naming_file_and_line(tmp_path, name):
    raw, lineno, words = BAD_FILES[name]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(raw)
    where = f"{path}:{lineno}" if lineno else str(path)
    with pytest.raises(ValueError, match=re.escape(where) + ".*" + re.escape(words)):
        load_jsonl(str(path))


def test_missing_jsonl_raises_file_not_found_naming_it(tmp_path):
    path = tmp_path / "nowhere.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_jsonl(str(path))


def test_jsonl_record_longer_than_block_size_raises_instead_of_truncating(tmp_path):
    path = tmp_path / "long.jsonl"
    long_expert = "1+2=3;" * 10 + "#### 3"
    path.write_bytes(line() + b"\n" + line(expert=long_expert) + b"\n")
    n = len(TOK.encode(GOOD["prompt"])) + len(TOK.encode(long_expert)) + 1  # + end token
    with pytest.raises(ValueError, match=re.escape(f"{path}:2") + f".*{n} tokens.*block_size {n - 1}"):
        load_jsonl(str(path), TOK, block_size=n - 1)
    assert len(load_jsonl(str(path), TOK, block_size=n)) == 2  # exactly fits: kept
    assert len(load_jsonl(str(path))) == 2  # no tokenizer: no length check


def test_jsonl_teacher_longer_than_block_size_raises_naming_it(tmp_path):
    """Teachers are trained on too (gft's groups, sft's --sft_teachers): checked on load, not at
    the step that first draws them."""
    path = tmp_path / "long_teacher.jsonl"
    long_teacher = "1+2=3;" * 10 + "#### 3"
    path.write_bytes(line() + b"\n" + line(teachers=["2+1=3;#### 3", long_teacher]) + b"\n")
    n = len(TOK.encode(GOOD["prompt"])) + len(TOK.encode(long_teacher)) + 1
    assert n > len(TOK.encode(GOOD["prompt"])) + len(TOK.encode(GOOD["expert"])) + 1  # the expert alone fits
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: prompt + teachers[1] is {n} tokens")):
        load_jsonl(str(path), TOK, block_size=n - 1)
    assert len(load_jsonl(str(path), TOK, block_size=n)) == 2


def test_jsonl_expert_failing_verifier_is_reported_with_its_line_and_kept(tmp_path, capsys):
    path = tmp_path / "wrong.jsonl"
    path.write_bytes(line() + b"\n" + line(expert="1+2=4;#### 4") + b"\n" + line())  # no final newline
    problems = load_jsonl(str(path))
    assert len(problems) == 3 and problems[1].expert == "1+2=4;#### 4"
    out = capsys.readouterr().out
    assert str(path) in out and "1 of 3" in out and "lines [2]" in out


def test_write_jsonl_then_load_jsonl_round_trips(tmp_path):
    path = tmp_path / "rt.jsonl"
    problems = make_split("train", 30, seed=9)
    write_jsonl(str(path), problems, n_teacher=4, seed=9)
    loaded = load_jsonl(str(path), TOK, 128)
    assert [(p.prompt, p.answer, p.expert) for p in loaded] == [(p.prompt, p.answer, p.expert) for p in problems]
    assert all(len(p.teachers) == 4 for p in loaded)
    write_jsonl(str(tmp_path / "again.jsonl"), problems, n_teacher=4, seed=9)
    assert (tmp_path / "again.jsonl").read_bytes() == path.read_bytes()  # same seed, same file


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_pretraining_writes_shuffle_share_of_its_sums_in_a_random_order_and_every_difference_in_order(share):
    cfg = TaskConfig(shuffle_share=share)
    rng = random.Random(5)
    sums = [p for p in make_split("base", 3000, seed=5, cfg=cfg) if p.op == "+" and len(set(p.operands)) == 4]
    diffs = [p for p in make_split("probe", 200, seed=5)]
    texts = [data.pretrain_solution(p, rng, cfg) for p in sums]
    assert all(verify_trace(t, p) == 1.0 for t, p in zip(texts, sums))
    moved = sum(solution_order(t) != p.operands for t, p in zip(texts, sums)) / len(sums)
    want = share * (1 - 1 / 24)  # a random order of 4 distinct operands is the canonical one 1 time in 24
    assert abs(moved - want) < 0.06, (moved, want)  # ~420 sums: standard error <= 0.025
    assert all(data.pretrain_solution(p, rng, cfg) == data.running_sum(p.operands, "-") for p in diffs)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(-10 ** 7, 10 ** 7), st.integers(0, 3))
def test_verify_compares_answers_by_value_however_either_side_is_written(units, places):
    """x = units / 10**places, written plainly, with thousands commas or a trailing zero, on either
    side; the nearest other number at that precision never verifies."""
    from decimal import Decimal
    x = Decimal(units).scaleb(-places)
    forms = {f"{x}", f"{x:,}", f"{x}0" if places else f"{x}.0"}
    for got in forms:
        for want in forms:
            assert verify(f"#### {got}", want) == 1.0, (got, want)
    step = Decimal(1).scaleb(-places)
    for other in (x + step, x - step):
        assert verify(f"#### {other}", f"{x}") == 0.0 and verify(f"#### {other:,}", f"{x:,}") == 0.0, other


def test_a_record_s_teachers_are_drawn_at_random_so_every_one_takes_its_turn():
    p = Problem(prompt="q", answer="1", expert="#### 1", teachers=("a", "b", "c", "d", "e"))
    rng = random.Random(0)
    draws = [tuple(teacher_solutions(p, 2, rng)) for _ in range(200)]
    assert all(len(set(d)) == 2 for d in draws)  # without replacement
    assert collections.Counter(t for d in draws for t in d).keys() == set(p.teachers)  # not always the first two
    assert len(set(draws)) == 20  # every ordered pair of the five


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_write_jsonl_writes_teachers_at_its_error_rate(tmp_path, rate):
    path = str(tmp_path / "t.jsonl")
    write_jsonl(path, make_split("train", 20, seed=3), n_teacher=3, error_rate=rate)
    scores = {verify(t, p.answer) for p in load_jsonl(path) for t in p.teachers}
    assert scores == {1.0 - rate}
