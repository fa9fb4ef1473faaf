"""Where pass@k saturates: a base's greedy accuracy and pass@k by number of operands.

    python experiments/passk_sizes.py --init N1/ckpt.pt N2/ckpt.pt N3/ckpt.pt --out results/base_seeds/passk_sizes.md

Table 4 of the paper compares pass@k at large k, which only separates methods on problems the
base does not already solve once in k tries; this prints, per operand count, how far from that
a base is. Problems: the ood split's bucket (held out from fine-tuning) at each operand count,
2-digit operands. Samples at T = 1 from a fixed generator through the KV-cache decode
(`train.py:sample(fast=True)`): the same distribution as train.py's evaluation, other draws.
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data as D  # noqa: E402
import train as T  # noqa: E402

OPS = (3, 8)  # operand counts with enough distinct held-out problems, whose solutions fit a 128-token block


def ops_list(text):
    try:
        ops = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ops takes comma-separated integers, got {text!r}")
    if any(not OPS[0] <= k <= OPS[1] for k in ops):
        raise argparse.ArgumentTypeError(f"--ops must be in [{OPS[0]}, {OPS[1]}], got {text!r}")
    return ops


def positive(text):
    if int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return int(text)


def row(model, tok, k_ops, a):
    """Greedy accuracy on a.greedy_n problems and pass@k (k in ks(a.n)) on the first a.problems,
    or with a.missed on the first a.problems of those the greedy answer got wrong."""
    probs = D.make_split("ood", max(a.greedy_n, a.problems), seed=0, cfg=D.TaskConfig(ood_ops=k_ops))
    new = max(len(tok.encode(p.expert)) for p in probs) + 8  # the longest solution, its end token and slack
    T.check_fits(tok, probs, new, model.config.block_size, from_init=True)
    greedy, wrong = T.greedy_accuracy(model, tok, probs[:a.greedy_n], new)
    sub = [p for p, _ in wrong][:a.problems] if a.missed else probs[:a.problems]
    if a.missed and len(sub) < a.problems:  # without --missed the split has max(greedy_n, problems) problems
        raise SystemExit(f"--missed: the base gets only {len(sub)} of --greedy_n {a.greedy_n} {k_ops}-operand "
                         f"problems wrong, fewer than --problems {a.problems}: raise --greedy_n or lower --problems")
    dev = next(model.parameters()).device
    outs, _ = T.sample(model, tok, [p.prompt for p in sub], a.n, 1.0, new, T.torch_gen(0, 0, "eval", dev), fast=True)
    right = [sum(D.verify(tok.decode_response(o), p.answer) == 1.0 for o in outs[i * a.n:(i + 1) * a.n])
             for i, p in enumerate(sub)]
    return greedy, [sum(T.pass_at_k(a.n, c, k) for c in right) / len(sub) for k in ks(a.n)]


def ks(n):
    return [k for k in (1, 4, 16, 64, 256) if k <= n]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", nargs="+", required=True, help="base checkpoints")
    ap.add_argument("--ops", type=ops_list, default=[4, 5, 6], help=f"operand counts, comma-separated, in {list(OPS)}")
    ap.add_argument("--problems", type=positive, default=64, help="problems per size for pass@k")
    ap.add_argument("--n", type=positive, default=64, help="samples per problem (pass@k for k = 1, 4, 16, ... <= n)")
    ap.add_argument("--greedy_n", type=positive, default=1000, help="problems per size for greedy accuracy")
    ap.add_argument("--missed", action="store_true", help="pass@k on problems the base gets wrong greedily "
                    "(the first --problems of them): are its failures per problem or per sample?")
    ap.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu or cuda")
    ap.add_argument("--out", default="", help="also write the table to this markdown file")
    a = ap.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    tok = D.Tokenizer()
    which = "problems the base gets wrong greedily" if a.missed else "problems"
    lines = [f"Greedy accuracy on {a.greedy_n} problems and pass@k from {a.n} samples of {a.problems} {which} at "
             f"T = 1, per operand count: `python experiments/passk_sizes.py {' '.join(sys.argv[1:])}`", "",
             "| base | operands | greedy | " + " | ".join(f"pass@{k}" for k in ks(a.n)) + " |",
             "|---" * (len(ks(a.n)) + 3) + "|"]
    for path in a.init:
        model = T.model_from_checkpoint(T.load_checkpoint(path), path).to(device)
        model.eval()
        for k_ops in a.ops:
            greedy, passk = row(model, tok, k_ops, a)
            lines.append(f"| {path} | {k_ops} | {greedy:.3f} | " + " | ".join(f"{x:.3f}" for x in passk) + " |")
            print(lines[-1], flush=True)
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
