"""Where pass@k saturates: a base's greedy accuracy and pass@k by number of operands.

    python experiments/passk_sizes.py --init N1/ckpt.pt N2/ckpt.pt N3/ckpt.pt --out results/base_seeds/passk_sizes.md

Table 4 of the paper compares pass@k at large k, which only separates methods on problems the
base does not already solve once in k tries. A tiny base's mistakes are slips that fall
independently in each sample, so every problem size it can do at all saturates; this prints
where that happens. Problems: the ood split's bucket (held out from fine-tuning) at each operand
count, 2-digit operands; samples at T = 1 from a fixed generator, as train.py's evaluation.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data as D  # noqa: E402
import train as T  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", nargs="+", required=True, help="base checkpoints")
    ap.add_argument("--ops", default="4,5,6", help="operand counts, comma-separated, each in [2, 9]")
    ap.add_argument("--problems", type=int, default=64, help="problems per size for pass@k")
    ap.add_argument("--n", type=int, default=64, help="samples per problem (pass@k for k = 1, 4, 16, ... <= n)")
    ap.add_argument("--greedy_n", type=int, default=1000, help="problems per size for greedy accuracy")
    ap.add_argument("--max_new_tokens", type=int, default=0, help="0: the size's longest expert solution + 8")
    ap.add_argument("--out", default="", help="also write the table to this markdown file")
    a = ap.parse_args()
    ops = [int(x) for x in a.ops.split(",")]
    if any(not 2 <= k <= 9 for k in ops) or min(a.problems, a.n, a.greedy_n) < 1:
        raise SystemExit(f"--ops must be in [2, 9] (got {ops}); --problems, --n and --greedy_n must be >= 1")
    ks = [k for k in (1, 4, 16, 64, 256) if k <= a.n]
    tok = D.Tokenizer()
    lines = [f"Greedy accuracy on {a.greedy_n} problems and pass@k from {a.n} samples of {a.problems} problems at "
             f"T = 1, per operand count (`python experiments/passk_sizes.py`)", "",
             "| base | operands | greedy | " + " | ".join(f"pass@{k}" for k in ks) + " |", "|---" * (len(ks) + 3) + "|"]
    for path in a.init:
        model = T.model_from_checkpoint(T.load_checkpoint(path), path)
        model.eval()
        dev = next(model.parameters()).device
        for k_ops in ops:
            probs = D.make_split("ood", max(a.greedy_n, a.problems), seed=0, cfg=D.TaskConfig(ood_ops=k_ops))
            new = a.max_new_tokens or max(len(tok.encode(p.expert)) for p in probs) + 8
            T.check_fits(tok, probs, new, model.config.block_size, from_init=True)
            greedy, _ = T.greedy_accuracy(model, tok, probs[:a.greedy_n], new)
            sub = probs[:a.problems]
            outs, _ = T.sample(model, tok, [p.prompt for p in sub], a.n, 1.0, new, T.torch_gen(0, 0, "eval", dev),
                               fast=True)
            right = [sum(D.verify(tok.decode_response(o), p.answer) == 1.0 for o in outs[i * a.n:(i + 1) * a.n])
                     for i, p in enumerate(sub)]
            row = [sum(T.pass_at_k(a.n, c, k) for c in right) / len(sub) for k in ks]
            lines.append(f"| {path} | {k_ops} | {greedy:.3f} | " + " | ".join(f"{x:.3f}" for x in row) + " |")
            print(lines[-1], flush=True)
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
