"""Gradient explosion, measured: SFT versus GFT on target tokens the model finds very unlikely.

SFT's per-token loss -log p has d/dp = -1/p: a target with p = 1e-6 weighs a million times a
sure one (eq. 3's implicit reward 1/pi). GFT multiplies each token's loss by C(p) = sg(p) below
tau (eq. 5), so its weight C/p is at most max(1, 1/tau). With A = 1, GFT's gradient w.r.t. the
logits z is C(p) * (softmax(z) - onehot), SFT's times C <= 1: never larger, equal at tau = 0,
and non-increasing as tau grows (more tokens fall below tau). tests/test_reliability.py checks
this ordering token by token (on sharp random logits); the parameter gradient is reported, not asserted (per-token
contributions can cancel, so a smaller sum of scaled terms is not guaranteed).

    python experiments/grad_explosion.py             # fits a tiny model first (seconds on CPU)
    python experiments/grad_explosion.py --init out/demo/base/ckpt.pt
"""
import argparse
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the core files live one folder up
sys.path.insert(0, ROOT)

import torch
import torch.nn.functional as F

import data as D
import gft
import train
from model import GPT, GPTConfig

TAUS = (0.0, 1e-4, 1e-3, 0.01, 0.1, 0.5, 1.0)  # the paper's range plus two inside the target band


def rows_of(tok, problems):
    """prompt + expert + eos, right-padded: tokens (N, L) and response mask (N, L)."""
    b = gft.flatten_groups(train.expert_groups(tok, problems), tok.pad_id)
    return b.tokens, b.resp_mask


def fit_model(steps=150, n_problems=16, seed=0):
    """A 1-layer, 32-wide model overfitted on a few solutions: sharp, so most tokens are unlikely."""
    tok = D.Tokenizer()
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=64, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32))
    tokens, resp = rows_of(tok, D.make_split("train", n_problems, seed=seed))
    targets = torch.where(resp[:, 1:], tokens[:, 1:], -1)  # (N, L-1) loss on the solution only
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        _, loss = model(tokens[:, :-1], targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@torch.no_grad()
def unlikely_targets(model, n_problems=16, lo=1e-6, hi=1e-2, seed=1):
    """Held-out contexts (prompt + expert solution) and, at each solution position, a random
    target token whose probability under the model is in [lo, hi]. Returns tokens (N, L),
    targets (N, L-1) and mask (N, L-1): False where no token is in the band."""
    tok = D.Tokenizer()
    tokens, resp = rows_of(tok, D.make_split("test", n_problems, seed=seed))
    p = F.softmax(model(tokens[:, :-1])[0].float(), -1)  # (N, L-1, V)
    band = (p >= lo) & (p <= hi) & resp[:, 1:, None]  # (N, L-1, V)
    g = torch.Generator().manual_seed(seed)
    score = torch.rand(band.shape, generator=g).masked_fill(~band, -1.0)  # a random in-band token
    return tokens, score.argmax(-1), band.any(-1)


def grad_norms(model, tokens, targets, mask, tau=None):
    """Gradient norms of the token-mean loss; tau=None is SFT (gft.sft_loss), else GFT, A = 1.
    Returns per-token |dL/dz| (n,) rescaled to one token (times the token count), per-token
    weights C/p (n,), and the global parameter-gradient norm."""
    model.zero_grad(set_to_none=True)
    logits = model(tokens[:, :-1])[0].float()  # (N, L-1, V)
    logits.retain_grad()
    lp = F.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)  # (N, L-1)
    lp = torch.where(mask, lp, 0.0)
    ones = torch.ones(lp.shape[0])
    loss = gft.sft_loss(lp, mask) if tau is None else gft.gft_loss(lp, ones, mask, tau)
    loss.backward()
    n = mask.sum()
    logit_norm = (logits.grad * n).norm(dim=-1)[mask]  # (n,) undo the token mean
    weight = gft.dcr_coefficient(lp.detach(), tau or 0.0)[mask] / lp.detach()[mask].exp()  # C / p
    param_norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None))
    return {"logit": logit_norm, "weight": weight, "param": param_norm, "p": lp.detach()[mask].exp()}


def table(model, taus=TAUS, **kw):
    """The figures as a markdown table; returns (text, {name: grad_norms(...)})."""
    batch = unlikely_targets(model, **kw)
    res = {"SFT": grad_norms(model, *batch)}
    res.update({f"GFT tau={t:g}": grad_norms(model, *batch, tau=t) for t in taus})
    sft, p = res["SFT"], res["SFT"]["p"]
    lines = [f"{len(p)} target tokens, p from {p.min():.1e} to {p.max():.1e} (median {p.median():.1e}); A = 1",
             "| objective | C/p mean | C/p max | dL/dz per token, mean | max | max ratio to SFT | dL/dtheta |",
             "|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        ratio = (r["logit"] / sft["logit"]).max()
        lines.append(f"| {name} | {r['weight'].mean():.3g} | {r['weight'].max():.3g} | {r['logit'].mean():.3g} | "
                     f"{r['logit'].max():.3g} | {ratio:.3g} | {r['param']:.3g} |")
    return "\n".join(lines), res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", default="", help="a train.py checkpoint (default: fit a tiny model)")
    ap.add_argument("--lo", type=float, default=1e-6, help="lowest target probability")
    ap.add_argument("--hi", type=float, default=1e-2, help="highest target probability")
    args = ap.parse_args()
    if args.init:
        model = train.model_from_checkpoint(train.load_checkpoint(args.init), args.init)
    else:
        model = fit_model()
    text, _ = table(model.eval(), lo=args.lo, hi=args.hi)
    print(text)
