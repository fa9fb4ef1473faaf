"""Text in and out: the tokenizer, the built-in verifiable task, the verifier, real JSONL data.

The built-in task is multi-operand addition written as running partial sums. Any order of
the operands is a correct reasoning path, so one problem has n! of them (24 for 4 operands),
the final answer is checked by a rule, and a difficulty knob (the number of operands)
gives disjoint splits. One worked example (4 operands):

    prompt           Q:23+45+12+67=
    expert           23+45=68;68+12=80;80+67=147;#### 147        (canonical order)
    teacher, right   12+67=79;79+23=102;102+45=147;#### 147      (another order)
    teacher, wrong   12+45=57;57+67=123;123+23=146;#### 146      (57+67 slipped by -1, and
                                                                 the slip propagates)
    verify(expert, "147") == 1.0, verify(wrong teacher, "147") == 0.0,
    verify("garbage", "147") == 0.0 (malformed completions score 0, never raise)

Every completion ends with the end-of-text token. The verifier reads the number after the
last "####" (the GSM8K convention, so real GSM8K-style data verifies with the same rule);
`verify_trace` is a stricter check that every step is right and uses each operand once.

Splits are disjoint by construction: a problem's split bucket is a hash of its prompt (the ood
split only while ood_ops != train_ops, as it shares the test split's bucket; train.py requires
ood_ops > train_ops).
    base   pretraining mix: 2-5 operands (TaskConfig.base_mix) plus the probe family
    train  fine-tuning prompts, TaskConfig.train_ops operands
    val    same distribution as train, for choosing settings (never the test split)
    test   held-out, same distribution as train
    ood    harder: TaskConfig.ood_ops operands
    probe  forgetting probe: two-operand subtraction ("Q:85-23="), present in pretraining,
           never in fine-tuning (gated bases solve only 7-30% of it greedily)
    easy   a second forgetting probe, one the base has mastered: two-operand sums
           ("Q:23+45="), held out, never in fine-tuning (gated bases solve 82-96% greedily)
"""
import json
import os
import random
import re
import zlib
from dataclasses import dataclass, field

import tiktoken

# ----------------------------------------------------------------------------- tokenizer

EOT = "<|endoftext|>"
PAD = "<|pad|>"


class Tokenizer:
    """tiktoken wrapper. "bytes" (default) is built locally: 256 byte tokens + EOT + PAD.

    Named tiktoken encodings ("gpt2", "cl100k_base", ...) download their files on first use;
    offline, they fail with a message that says so.
    """

    def __init__(self, name="bytes"):
        self.name = name
        if name == "bytes":
            self.enc = tiktoken.Encoding(
                name="gft-bytes",
                pat_str=r"\s+|\S+",  # any split works: with no merges every byte is a token
                mergeable_ranks={bytes([i]): i for i in range(256)},
                special_tokens={EOT: 256, PAD: 257},
            )
            self.pad_id = 257
        else:
            known = tiktoken.list_encoding_names()
            if name not in known:
                raise ValueError(f"unknown tokenizer {name!r}; allowed: 'bytes' or one of {known}")
            try:
                self.enc = tiktoken.get_encoding(name)
            except Exception as e:  # network errors come in many types; re-raise with the cause
                raise RuntimeError(f"tiktoken encoding {name!r} could not be loaded (it downloads its "
                                   f"files on first use; is this machine offline?): {e}") from e
            self.pad_id = self.enc.eot_token  # pads are always masked out, so reusing EOT is safe
        self.eos_id = self.enc.eot_token
        self.vocab_size = self.enc.n_vocab

    def encode(self, text):
        """str -> list[int]. Special-token strings inside text are encoded as plain bytes."""
        return self.enc.encode(text, disallowed_special=())

    def decode(self, ids):
        """list[int] -> str; invalid UTF-8 (a cut-off multi-byte char) becomes U+FFFD."""
        return self.enc.decode(list(ids), errors="replace")

    def decode_response(self, ids):
        """Decode up to (not including) the first end-of-text token."""
        ids = list(ids)
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return self.decode(ids)


# ----------------------------------------------------------------------------- verifier

_ANSWER = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")


def extract_answer(text):
    """The number after the last '####', commas removed; None when there is none."""
    if not isinstance(text, str):
        return None
    found = _ANSWER.findall(text)
    return found[-1].replace(",", "") if found else None


def verify(completion, answer):
    """Rule-based reward: 1.0 if the final answer equals `answer` (numerically), else 0.0.

    The final answer is the number right after the last '####', as verl's GSM8K scorer reads it;
    what follows that number is not read ('#### 147 or 148' scores as 147). Never raises: any
    string (or non-string) that has no well-formed answer scores 0.
    """
    got = extract_answer(completion)
    if got is None:
        return 0.0
    want = str(answer).replace(",", "").strip()
    try:
        return float(float(got) == float(want))
    except ValueError:
        return float(got == want)


_STEP = re.compile(r"^(\d+)([+-])(\d+)=(\d+)$")


def parse_steps(text):
    """'23+45=68;68+12=80;#### 80' -> ([(23, '+', 45, 68), (68, '+', 12, 80)], '80').

    Returns None when the text is not a sequence of 'a+b=c;' steps and a final answer line.
    """
    if not isinstance(text, str) or "####" not in text:
        return None
    body, _, final = text.rpartition("####")
    parts = body.split(";")
    if parts[-1] != "" or len(parts) < 2:
        return None
    steps = []
    for part in parts[:-1]:
        m = _STEP.match(part)
        if not m:
            return None
        steps.append((int(m[1]), m[2], int(m[3]), int(m[4])))
    return steps, final.strip()


def solution_path(text):
    """The steps (a, op, b) in order: one reasoning path. A running sum's path is its operand
    order; a tree sum is a path of its own. None if the text does not parse."""
    parsed = parse_steps(text)
    return None if parsed is None else tuple(s[:3] for s in parsed[0])


def solution_order(text):
    """The order in which a running-sum solution adds the operands: (23, 45, 12, 67) for
    '23+45=68;68+12=80;80+67=147;#### 147'. None if the text does not parse."""
    parsed = parse_steps(text)
    if parsed is None:
        return None
    steps, _ = parsed
    return (steps[0][0],) + tuple(s[2] for s in steps)


def verify_trace(completion, problem):
    """Strict check: every step's arithmetic is right, each step uses up two of the numbers at
    hand (the operands, then the results of earlier steps) and the last one left is the answer.
    Any order and grouping of an addition passes (running sums and tree sums alike); a
    subtraction must run left to right from the first operand. Catches what the answer-only
    reward pays for: right answers reached by wrong traces."""
    if not problem.operands:
        raise ValueError("verify_trace needs a synthetic problem (with operands)")
    parsed = parse_steps(completion)
    if parsed is None:
        return 0.0
    steps, final = parsed
    at_hand = list(problem.operands)  # numbers not yet used; a step takes two and gives back one
    for i, (a, op, b, c) in enumerate(steps):
        if op != problem.op or c != (a + b if op == "+" else a - b):
            return 0.0
        if op == "-" and a != (problem.operands[0] if i == 0 else steps[i - 1][3]):
            return 0.0  # a - b - c: only the subtrahends may change places
        for x in (a, b):
            if x not in at_hand:
                return 0.0
            at_hand.remove(x)
        at_hand.append(c)
    return float(at_hand == [steps[-1][3]] and final == problem.answer and str(steps[-1][3]) == problem.answer)


# ----------------------------------------------------------------------------- the task

@dataclass(frozen=True)
class Problem:
    prompt: str  # "Q:23+45+12="
    answer: str  # "80"
    expert: str  # one canonical solution, ending in "#### 80"
    teachers: tuple = ()  # fixed teacher solutions (real data); synthetic ones are generated
    operands: tuple = ()  # synthetic only: (23, 45, 12)
    op: str = ""  # synthetic only: "+" or "-"


TEACHER_ERROR = 0.25  # chance that a built-in teacher solution carries one slip (train.py --teacher_error)


@dataclass
class TaskConfig:
    """The difficulty knob and the mixes; one place for every setting of the task."""
    digits: int = 2  # operands in [10, 99]
    base_mix: dict = field(default_factory=lambda: {2: 0.25, 3: 0.45, 4: 0.15, 5: 0.15})
    # ^ 4- and 5-operand problems need ~25-30% of pretraining or the base
    #   model cannot start them, and GFT needs a base that is sometimes right
    probe_share: float = 0.10  # pretraining rows from the forgetting-probe family
    shuffle_share: float = 0.30  # pretraining solutions written in a random operand order
    train_ops: int = 4  # fine-tuning difficulty (train / val / test)
    ood_ops: int = 5  # harder, out-of-distribution test
    expert_style: str = "chain"  # the expert's form (EXPERT_STYLES); pretraining always writes chains

    def __post_init__(self):
        if self.expert_style not in EXPERT_STYLES:
            raise ValueError(f"TaskConfig.expert_style must be one of {tuple(EXPERT_STYLES)}, got {self.expert_style!r}")
        if not 1 <= self.digits <= 6:
            raise ValueError(f"TaskConfig.digits must be in [1, 6], got {self.digits}")
        for name in ("probe_share", "shuffle_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"TaskConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("train_ops", "ood_ops"):
            if not 2 <= getattr(self, name) <= 9:
                raise ValueError(f"TaskConfig.{name} must be in [2, 9], got {getattr(self, name)}")
        if not self.base_mix or any(k < 2 or w < 0 for k, w in self.base_mix.items()) or sum(self.base_mix.values()) <= 0:
            raise ValueError(f"TaskConfig.base_mix must map operand counts >= 2 to weights >= 0 "
                             f"with a positive sum, got {self.base_mix}")


SPLITS = ("base", "train", "val", "test", "ood", "probe", "easy")
_BUCKETS = {"base": range(0, 6), "train": range(6, 8), "val": range(8, 9),
            "test": range(9, 10), "ood": range(9, 10), "probe": range(6, 10), "easy": range(6, 10)}
# splits sharing a bucket never share a problem: they differ in operand count or op (test: train_ops
# sums, ood: ood_ops sums, probe: differences, easy: 2-operand sums); the probes span four buckets
# so that each holds over 1000 problems (1701 differences and 3290 sums of two 2-digit numbers)


def bucket(prompt):
    """Stable split bucket 0-9 from the prompt text (crc32 is the same on every machine)."""
    return zlib.crc32(prompt.encode()) % 10


def running_sum(operands, op="+"):
    """(23, 45, 12) -> '23+45=68;68+12=80;#### 80'."""
    steps, acc = [], operands[0]
    for x in operands[1:]:
        nxt = acc + x if op == "+" else acc - x
        steps.append(f"{acc}{op}{x}={nxt};")
        acc = nxt
    return "".join(steps) + f"#### {acc}"


def tree_sum(operands, op="+"):
    """(23, 45, 12, 67) -> '23+45=68;12+67=79;68+79=147;#### 147': neighbours summed in pairs,
    level by level (an odd one out moves up a level as it is). No pretraining solution is
    written this way, so to the base model it is an off-policy expert. A subtraction has no
    such regrouping: it stays a running difference."""
    if op != "+":
        return running_sum(operands, op)
    level, steps = list(operands), []
    while len(level) > 1:
        nxt = []
        for a, b in zip(level[0::2], level[1::2]):
            steps.append(f"{a}+{b}={a + b};")
            nxt.append(a + b)
        level = nxt + level[len(level) - len(level) % 2:]
    return "".join(steps) + f"#### {level[0]}"


EXPERT_STYLES = {"chain": running_sum, "tree": tree_sum}
# chain: the control, written exactly as pretraining's canonical path (on-policy for the base);
# tree: the off-policy regime (README "Three regimes")


def make_problem(operands, op="+", style="chain"):
    if style not in EXPERT_STYLES:
        raise ValueError(f"expert style {style!r} is unknown; allowed: {tuple(EXPERT_STYLES)}")
    prompt = "Q:" + op.join(str(x) for x in operands) + "="
    expert = EXPERT_STYLES[style](operands, op)
    return Problem(prompt=prompt, answer=extract_answer(expert), expert=expert,
                   operands=tuple(operands), op=op)


def _random_problem(rng, n_ops, cfg, op="+"):
    lo, hi = 10 ** (cfg.digits - 1), 10 ** cfg.digits - 1
    xs = [rng.randint(lo, hi) for _ in range(n_ops)]
    if op == "-":
        xs = sorted(xs, reverse=True)  # a - b >= 0
    return make_problem(xs, op, cfg.expert_style)


def make_split(name, n, seed=0, cfg=None):
    """n distinct problems of one split, reproducible from (name, seed, cfg)."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; allowed: {SPLITS}")
    if n < 1:
        raise ValueError(f"number of problems must be >= 1, got {n}")
    cfg = cfg or TaskConfig()
    if name == "easy" and 2 in (cfg.train_ops, cfg.ood_ops):
        raise ValueError(f"split 'easy' holds 2-operand sums, which are this task's train_ops ({cfg.train_ops}) or "
                         f"ood_ops ({cfg.ood_ops}) problems: set both above 2 to use it")
    rng = random.Random(f"{name}-{seed}")
    mix_ops, mix_w = zip(*sorted(cfg.base_mix.items()))
    out, seen, misses = [], set(), 0
    for _ in range(1000 * n):
        if name == "base":
            if rng.random() < cfg.probe_share:
                p = _random_problem(rng, 2, cfg, "-")
            else:
                p = _random_problem(rng, rng.choices(mix_ops, mix_w)[0], cfg)
        elif name == "probe":
            p = _random_problem(rng, 2, cfg, "-")
        elif name == "easy":
            p = _random_problem(rng, 2, cfg)
        else:
            p = _random_problem(rng, cfg.ood_ops if name == "ood" else cfg.train_ops, cfg)
        if bucket(p.prompt) in _BUCKETS[name] and p.prompt not in seen:
            seen.add(p.prompt)
            out.append(p)
            misses = 0
            if len(out) == n:
                return out
        else:  # this many draws in a row without a new problem: the split is used up at this difficulty
            misses += 1  # (the last new one takes ~10x its size in draws, at a bucket share of 0.1)
            if misses > max(100_000, 1000 * len(seen)):
                break
    raise ValueError(f"split {name!r} has fewer than {n} distinct problems at this difficulty "
                     f"(digits={cfg.digits}); ask for fewer")


def pretrain_solution(problem, rng, cfg):
    """The text a base model learns from: the canonical running sum, or one in a random order
    (never the expert's own form when that is not a chain)."""
    if problem.op == "+" and rng.random() < cfg.shuffle_share:
        return running_sum(rng.sample(problem.operands, len(problem.operands)), "+")
    return running_sum(problem.operands, problem.op)


def _slip(operands, rng, op="+"):
    """A plausible mistake that propagates: either a miscopied operand digit or a partial
    sum off by 1 or 10 (a dropped or doubled carry), the later steps computed from it."""
    xs = list(operands)
    if rng.random() < 0.5:  # copy slip
        i = rng.randrange(len(xs))
        s = list(str(xs[i]))
        j = rng.randrange(len(s))
        choices = [d for d in "0123456789" if d != s[j] and not (j == 0 and d == "0")]
        s[j] = rng.choice(choices)
        xs[i] = int("".join(s))
        return running_sum(xs, op)
    sign = 1 if op == "+" else -1
    k = rng.randrange(1, len(xs))  # which step slips
    right = xs[0] + sign * sum(xs[1:k + 1])  # the true partial result at step k
    delta = rng.choice([d for d in (-10, -1, 1, 10) if right + d >= 0] or [1, 10])
    steps, acc = [], xs[0]
    for i, x in enumerate(xs[1:], start=1):
        nxt = acc + sign * x + (delta if i == k else 0)
        steps.append(f"{acc}{op}{x}={nxt};")
        acc = nxt
    return "".join(steps) + f"#### {acc}"


def teacher_solutions(problem, n, rng, error_rate=TEACHER_ERROR):
    """n teacher solutions for one problem.

    Synthetic problems: each solution takes a random operand order (diverse paths) and, with
    probability error_rate, one slip that makes it wrong. Real data: up to n of the record's
    fixed teacher solutions, without replacement (fewer if the record has fewer).
    """
    if n < 0:
        raise ValueError(f"n (teacher count) must be >= 0, got {n}")
    if not problem.operands:
        return rng.sample(list(problem.teachers), min(n, len(problem.teachers)))
    xs, out = problem.operands, []
    for _ in range(n):
        if problem.op == "+":
            order = rng.sample(xs, len(xs))
        else:  # a-b-c = a-c-b: only the subtrahends may change places
            order = (xs[0],) + tuple(rng.sample(xs[1:], len(xs) - 1))
        out.append(_slip(order, rng, problem.op) if rng.random() < error_rate else running_sum(order, problem.op))
    return out


# ----------------------------------------------------------------------------- real data

FIELDS = {"prompt": str, "answer": str, "expert": str, "teachers": list}


def load_jsonl(path, tokenizer=None, block_size=None, fix="raise block_size or drop the record yourself"):
    """Read problems from JSONL, one record per line:
        {"prompt": str, "answer": str, "expert": str, "teachers": [str, ...]}
    Every problem (file, line) is an error that names the file and line: a missing file, an
    empty file, a blank or malformed line, a missing field or one of the wrong type, bytes that
    are not UTF-8. With tokenizer and block_size, a prompt + expert or prompt + teacher solution
    longer than the block is an error too (never truncated; fix says what to do). Expert
    solutions that fail the verifier are kept (their reward is 0) and reported on stdout with
    their line numbers.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise ValueError(f"{path}: file is empty")
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the final newline ends the last line; it is not an empty record
    problems, failing = [], []
    for i, line in enumerate(lines, start=1):
        where = f"{path}:{i}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        if not text.strip():
            raise ValueError(f"{where}: blank line (every line must be one JSON record)")
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: malformed JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        for key, typ in FIELDS.items():
            if key not in rec:
                raise ValueError(f"{where}: missing field {key!r}")
            if not isinstance(rec[key], typ):
                raise ValueError(f"{where}: field {key!r} must be {typ.__name__}, got {type(rec[key]).__name__}")
        if not all(isinstance(t, str) for t in rec["teachers"]):
            raise ValueError(f"{where}: field 'teachers' must be a list of strings")
        if not rec["prompt"] or not rec["expert"]:
            raise ValueError(f"{where}: 'prompt' and 'expert' must be non-empty")
        if tokenizer is not None and block_size is not None:  # every solution is trained on: each must fit
            n_prompt = len(tokenizer.encode(rec["prompt"]))
            solutions = [("expert", rec["expert"])] + [(f"teachers[{j}]", t) for j, t in enumerate(rec["teachers"])]
            for name, sol in solutions:
                n = n_prompt + len(tokenizer.encode(sol)) + 1
                if n > block_size:
                    raise ValueError(f"{where}: prompt + {name} is {n} tokens, longer than block_size "
                                     f"{block_size} ({fix})")
        if verify(rec["expert"], rec["answer"]) != 1.0:
            failing.append(i)
        problems.append(Problem(prompt=rec["prompt"], answer=rec["answer"], expert=rec["expert"],
                                teachers=tuple(rec["teachers"])))
    if failing:
        print(f"{path}: {len(failing)} of {len(problems)} expert solutions fail the verifier "
              f"(reward 0): lines {failing[:20]}{' ...' if len(failing) > 20 else ''}")
    return problems


def write_jsonl(path, problems, n_teacher=3, seed=0, error_rate=TEACHER_ERROR):
    """Write problems in the JSONL schema, with n_teacher teacher solutions each."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for p in problems:
            rec = {"prompt": p.prompt, "answer": p.answer, "expert": p.expert,
                   "teachers": teacher_solutions(p, n_teacher, rng, error_rate)}
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":  # regenerate the shipped example file
    write_jsonl(os.path.join(os.path.dirname(__file__), "data", "example.jsonl"), make_split("train", 50))
    print("wrote data/example.jsonl")
