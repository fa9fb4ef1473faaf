"""The README's worked example, computed by the project's own code: one prompt, one hybrid group.

    python experiments/worked_example.py   # prints two markdown tables (pasted into README.md)

The group is 1 expert + 3 teachers + 4 rollouts (the paper's K = 8). The expert and the
teachers come from data.py (teachers drawn with random.Random(TEACHER_SEED), chosen so that
exactly one of the three is wrong); the four rollouts are fixed texts, written to look like a
small model's samples, so no trained model is needed. data.verify scores them,
gft.flatten_groups gives the advantages. The three token probabilities are fixed
illustrative values, not a model's: they go through gft.dcr_coefficient at three taus.
tests/test_readme.py checks that this output appears verbatim in README.md.
"""
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the core files live one folder up
sys.path.insert(0, ROOT)

import torch

import data as D
import gft

OPERANDS = (23, 45, 12, 67)  # data.py's own docstring example
TEACHER_SEED = 0             # with D.TEACHER_ERROR (0.25), this draw gives 2 right teachers and 1 wrong
ROLLOUTS = [  # fixed, so the example needs no trained model
    ("23+45=68;68+12=80;80+67=147;#### 147", "right, canonical order"),
    ("23+45=68;68+12=80;80+67=137;#### 137", "carry slip in the last step"),
    ("12+23=35;35+45=80;80+67=147;#### 147", "right, another order"),
    ("23+45=68;68+12=80;80+6", "cut off at max_new_tokens: no answer"),
]
TOKEN_PROBS = (0.9, 0.4, 0.05)  # illustrative: a confident, an uncertain and a rare token
TOKEN_POSITIONS = (0, 15, 24)   # where in the expert response those tokens sit
TOKEN_ROLES = ("first digit, copied from the prompt", "tens digit of 68+12=80 (a carry)",
               "hundreds digit of 80+67=147 (a carry)")
TAUS = (0.0, 0.5, 1.0)


def build_group():
    """(problem, [(source, text, note)]) for the one prompt of the example."""
    problem = D.make_problem(OPERANDS)
    teachers = D.teacher_solutions(problem, 3, random.Random(TEACHER_SEED), error_rate=D.TEACHER_ERROR)
    rows = [("expert", problem.expert, "the dataset's demonstration")]
    for t in teachers:
        ok = D.verify(t, problem.answer) == 1.0
        rows.append(("teacher", t, "right, another order" if ok else "a slip that propagates"))
    rows += [("rollout", text, note) for text, note in ROLLOUTS]
    return problem, rows


def fmt(x):
    return f"{x:.4f}".replace("-0.0000", "0.0000")


def main():
    tok = D.Tokenizer("bytes")
    problem, rows = build_group()
    rewards = [D.verify(text, problem.answer) for _, text, _ in rows]
    teacher_rewards = rewards[1:4]
    if sorted(teacher_rewards) != [0.0, 1.0, 1.0]:  # the example's story needs one wrong teacher
        raise RuntimeError(f"TEACHER_SEED {TEACHER_SEED} no longer gives one wrong teacher: {teacher_rewards}")
    # every response ends with end-of-text, except one cut off at max_new_tokens (as train.sample)
    group = gft.Group(tok.encode(problem.prompt),
                      [gft.Response(tok.encode(text) + ([] if note.startswith("cut off") else [tok.eos_id]), src, r)
                       for (src, text, note), r in zip(rows, rewards)])
    batch = gft.flatten_groups([group], tok.pad_id)  # advantages (8,), eq. (4)
    R = batch.rewards
    out = [f"Prompt `{problem.prompt}`, answer {problem.answer}. Group mean reward {R.mean().item():.4f}, "
           f"sample std {R.std().item():.4f}; zero-variance groups: {int(batch.zero_var.sum())}.", "",
           "| k | source | response | note | R (verify) | strict trace | advantage A |",
           "|---|---|---|---|---|---|---|"]
    for k, ((src, text, note), r, a) in enumerate(zip(rows, rewards, batch.advantages.tolist()), start=1):
        strict = D.verify_trace(text, problem)
        out.append(f"| {k} | {src} | `{text}` | {note} | {r:.0f} | {strict:.0f} | {fmt(a)} |")

    # DCR on three tokens of the expert response (row 1)
    expert_ids = tok.encode(problem.expert)
    p = torch.tensor(TOKEN_PROBS, dtype=torch.float64)
    lp = p.log()
    A = batch.advantages[0].item()
    out += ["", f"DCR on three tokens of the expert response (row 1, A = {fmt(A)}); p is illustrative, "
            "C = `gft.dcr_coefficient(log p, tau)`:", "",
            "| token | p | C (tau=0) | C/p (tau=0) | C (tau=0.5) | C/p (tau=0.5) | C (tau=1) | C/p (tau=1) |",
            "|---|---|---|---|---|---|---|---|"]
    cols = []
    for tau in TAUS:
        C = gft.dcr_coefficient(lp, tau)
        # the same weight read off gft_loss's gradient: d loss / d p = -A * C / p / n_tokens
        pp = p.clone().requires_grad_()
        loss = gft.gft_loss(pp.log()[None], torch.ones(1, dtype=torch.float64),
                            torch.ones(1, len(p), dtype=torch.bool), tau)
        (g,) = torch.autograd.grad(loss, pp)
        torch.testing.assert_close(-g * len(p), C / p)
        cols.append((C.tolist(), (C / p).tolist()))
    for i, (pos, role, prob) in enumerate(zip(TOKEN_POSITIONS, TOKEN_ROLES, TOKEN_PROBS)):
        ch = tok.decode([expert_ids[pos]])
        cells = " | ".join(f"{fmt(C[i])} | {fmt(W[i])}" for C, W in cols)
        out.append(f"| `{ch}` at {pos}: {role} | {prob} | {cells} |")
    text = "\n".join(out)
    print(text)
    return text


if __name__ == "__main__":
    main()
