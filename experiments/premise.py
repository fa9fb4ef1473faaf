"""Is the expert off-policy for the base model? The paper's premise, measured per source.

    python experiments/premise.py --init out/demo/base/ckpt.pt [more bases] [--styles chain,tree]

The paper's argument (SFT's implicit reward 1/pi blows up on tokens the model finds unlikely;
DCR bounds it) bites only where the demonstrations are unlikely under the model. This prints,
under each base model and for each expert style (data.py EXPERT_STYLES), for the expert's, the
teacher's and the base's own responses to the same val prompts (1 expert + 3 teacher + 4
rollouts at T=1, as one GFT group):
    mean log-prob per token, the share of tokens with p < 0.1 and with p < tau, mean and max
    of 1/p, and the norm of the parameter gradient (before clipping) of SFT's loss and of
    GFT's rectified loss (advantage 1, this tau) on that source's tokens alone,
then the verdict of the rule fixed before any method was compared (OFF_POLICY below).
Writes the tables to --out (results/premise.md; every measurement appended to results/premise.jsonl).
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the core files live one folder up
sys.path.insert(0, ROOT)
import torch  # noqa: E402

import data as D  # noqa: E402
import gft  # noqa: E402
import train  # noqa: E402


def grad_norm(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None)).item()


def diagnose(model, tok, problems, cfg, tau):
    """Per source: {mean_logprob, frac_p<0.1, frac_p<tau, mean_inv_p, max_inv_p, grad_sft, grad_gft, tokens}."""
    groups, _ = train.build_groups(tok, problems, cfg, 0, 1, 3, train.sample_rollouts(model, tok, problems, cfg, 0, 4))
    batch = gft.flatten_groups(groups, tok.pad_id)
    dev = next(model.parameters()).device
    tokens, resp = batch.tokens.to(dev), batch.resp_mask.to(dev)
    model.eval()

    def logprobs():  # (N, L-1), a fresh graph for each gradient
        with train.autocast(dev):
            return model.token_logprobs(tokens, resp, with_entropy=False)[0]
    mask = resp[:, 1:]
    lp = logprobs()
    out = {}
    for s in gft.SOURCES:
        rows = torch.tensor([src == s for src in batch.sources], device=dev)
        m = mask & rows[:, None]  # (N, L-1): this source's response tokens
        x = lp.detach().double()[m]
        p = x.exp()
        out[s] = {"tokens": int(m.sum()), "reward": batch.rewards[rows.cpu()].mean().item(),
                  "mean_logprob": x.mean().item(), "frac_p<0.1": (p < 0.1).double().mean().item(),
                  "frac_p<tau": (p < tau).double().mean().item(),
                  "mean_inv_p": (1 / p).mean().item(), "max_inv_p": (1 / p).max().item(),
                  "grad_sft": grad_norm(model, gft.sft_loss(logprobs(), m)),
                  "grad_gft": grad_norm(model, gft.gft_loss(logprobs(), torch.ones(len(rows), device=dev), m, tau))}
    return out


def verdict(res):
    """The rule, fixed before the comparisons: the expert is OFF-POLICY for a base when its mean
    log-prob per token is at most twice the base's own rollouts' (it surprises the base at least
    twice as much per token as the base's own samples do) and at least as large a share of its
    tokens has p < 0.1; ON-POLICY when its mean log-prob is at least the rollouts'; else MIXED."""
    e, r = res["expert"], res["rollout"]
    if e["mean_logprob"] <= 2 * r["mean_logprob"] and e["frac_p<0.1"] >= r["frac_p<0.1"]:
        return "off-policy"
    return "on-policy" if e["mean_logprob"] >= r["mean_logprob"] else "mixed"


COLS = ["tokens", "reward", "mean_logprob", "frac_p<0.1", "frac_p<tau", "mean_inv_p", "max_inv_p", "grad_sft", "grad_gft"]


def table(results, tau):
    """results: [(base, style, res)] -> one markdown table, a row per (base, style, source)."""
    head = [c.replace("tau", str(tau)) for c in COLS]
    lines = ["| base | expert style | source | " + " | ".join(head) + " | verdict |", "|---" * (len(COLS) + 4) + "|"]
    for base, style, res in results:
        for s, r in res.items():
            cells = " | ".join(f"{r[c]:.0f}" if c == "tokens" else f"{r[c]:.4g}" for c in COLS)
            lines.append(f"| {base} | {style} | {s} | {cells} | {verdict(res) if s == 'expert' else ''} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", required=True, nargs="+", help="base model checkpoint(s) (train.py pretrain)")
    ap.add_argument("--styles", default="chain,tree", help="expert styles to measure, comma-separated "
                    f"({', '.join(D.EXPERT_STYLES)})")
    ap.add_argument("--digits", type=int, default=2, help="digits per operand (3: knowledge the base lacks); "
                    "writes premise_digits<D>.md when not 2")
    ap.add_argument("--train_ops", type=int, default=4, help="operands per sum (train.py --train_ops)")
    ap.add_argument("--max_new_tokens", type=int, default=0, help="rollout budget (0: 64, or 72 for 3 digits)")
    ap.add_argument("--n", type=int, default=64, help="val prompts (each gives 1 expert, 3 teacher, 4 rollouts)")
    ap.add_argument("--tau", type=float, default=0.7, help="the DCR threshold for p < tau and GFT's gradient")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=os.path.join(ROOT, "results"), help="folder for premise.md / premise.jsonl")
    a = ap.parse_args()
    styles = a.styles.split(",")
    os.makedirs(a.out, exist_ok=True)
    for st in styles:
        if st not in D.EXPERT_STYLES:
            raise SystemExit(f"--styles: unknown style {st!r}; allowed: {', '.join(D.EXPERT_STYLES)}")
    results = []
    for init in a.init:
        ck = train.load_checkpoint(init)
        model = train.model_from_checkpoint(ck, init).to(train.pick_device(a.device))
        tok = D.Tokenizer(ck.get("tokenizer", "bytes"))
        for st in styles:
            cfg = train.make_config(mode="gft", init=init, tau=a.tau, device=a.device, expert_style=st, digits=a.digits,
                                    train_ops=a.train_ops, ood_ops=max(5, a.train_ops + 1),  # unused here;
                                    # make_config only asks that it exceed train_ops
                                    max_new_tokens=a.max_new_tokens or (72 if a.digits > 2 else 64))
            problems = D.make_split("val", a.n, seed=0, cfg=D.TaskConfig(digits=a.digits, train_ops=a.train_ops,
                                                                          expert_style=st))
            res = diagnose(model, tok, problems, cfg, a.tau)
            results.append((init, st, res))
            print(f"{init} | expert {st}: {verdict(res)} (expert mean log-prob {res['expert']['mean_logprob']:.3f}, "
                  f"rollouts {res['rollout']['mean_logprob']:.3f})", flush=True)
            with open(os.path.join(a.out, "premise.jsonl"), "a") as f:
                f.write(json.dumps({"init": init, "expert_style": st, "digits": a.digits, "train_ops": a.train_ops, "tau": a.tau, "n": a.n, "sources": res,
                                    "verdict": verdict(res)}) + "\n")
    text = (f"Premise diagnostics ({a.n} val prompts of {a.train_ops} {a.digits}-digit operands per base; 1 expert + 3 teacher + 4 rollouts at T=1 each; "
            f"gradient norms before clipping, GFT at tau {a.tau} with advantage 1; verdict: "
            f"experiments/premise.py:verdict)\n\n" + table(results, a.tau))
    print(text)
    with open(os.path.join(a.out, "premise.md" if a.digits == 2 else f"premise_digits{a.digits}.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
