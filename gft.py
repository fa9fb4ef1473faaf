"""GFT: Group Fine-Tuning, the objective and the group construction.

Paper: "GFT: From Imitation to Reward Fine-Tuning with Unbiased Group Advantages and
Dynamic Coefficient Rectification", Gan et al., arXiv 2604.14258 (official code:
ZJU-OmniAI/GFT, a fork of verl). Notation: pi the model, p_t = pi(y_t | x, y_<t) the
probability of the chosen token t, sg() stop-gradient, tau the DCR threshold.

Equations, in the order this file defines them:
  (5) DCR coefficient  C(p_t) = sg(p_t) if p_t < tau else 1                dcr_coefficient
  (6) per-token loss   l_t = -A(y) * C(p_t) * log p_t, masked token mean    gft_loss
  (4) GAL advantage    A_k = (R_k - mean_G R) / (std_G R + eps) over a hybrid group G of
                       expert, teacher and rollout responses                group_advantages
  (1)-(3) SFT is REINFORCE with the implicit reward r(y) = p_exp(y) / pi(y)
                       implicit_reward, sft_as_policy_gradient_loss
  Limiting cases: tau = 0, A = 1 is SFT (sft_loss); tau = 1, A = 1 is DFT (arXiv 2508.05629,
  dft_loss); tau = 0 on rollouts is one-update GRPO (grpo_loss).
Then the groups (flatten_groups), diagnostics, and the input checks every loss runs.

Deviations from the paper or the official code (README.md, "Deviations from the paper", says why):
  1. p_t is exp(log p_t) of the chosen token, not a full-vocabulary softmax: same value.
  2. C = 1 when p_t >= tau, as the paper writes; the official code keeps 1 only for p_t > tau.
  3. A group of one response gets A = r exactly; verl gives r / (1 + eps).
  4. A group of >= 2 equal rewards gets A = 0 exactly, not the rounding of r - mean.
  5. Ragged groups: group_advantages takes a (P, K) presence mask.
  6. A response with no loss tokens counts for nothing; a batch with none is an error.
  7. Every response is tagged with its source (expert, teacher, rollout); the loss ignores it.
  8. float32 arithmetic (float64 if given), padding zeroed first; NaN, inf or > 0 log-probs are errors.
  9. grpo_loss clamps log-ratios to [-20, 20] as verl; verl's k3 clamp and dual-clip are left out.
 10. GroupBatch.zero_var counts groups of size >= 2 only (a size-1 group has A = r, deviation 3).
"""
import math
from dataclasses import dataclass

import torch

AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
SOURCES = ("expert", "teacher", "rollout")
LOGPROB_TOL = 1e-4     # log-probs above this are a bug upstream, not rounding
LOG_RATIO_CLAMP = 20.0  # verl's clamp of log(pi / pi_old) and log(pi_ref / pi) before exp


# -----------------------------------------------------------------------------
# (5)-(6): DCR and the GFT loss

def dcr_coefficient(logprobs, tau):
    """C = p if p < tau else 1, with p = exp(logprobs); same shape, detached, eq. (5).

    tau = 0 gives C = 1 (SFT weights); tau = 1 gives C = p (DFT weights). Non-strict
    threshold as the paper (deviation 2). The gradient of (6) is -A * (C / p_t) * grad p_t, so
    the inverse-probability weight C / p_t is at most max(1, 1/tau).
    """
    _check_tau("dcr_coefficient", tau)
    p = _float(logprobs.detach()).exp()                     # chosen-token prob, no softmax (dev. 1)
    return torch.where(p < tau, p, torch.ones_like(p))


def gft_loss(logprobs, advantages, mask, tau, agg="token-mean"):
    """GFT loss, eq. (6): scalar from logprobs (N, T), advantages (N,), mask (N, T).

    logprobs are log pi of the chosen tokens, with grad (train.py: the model on
    GroupBatch.tokens gives (N, L-1) log-probs of tokens[:, 1:]; mask = resp_mask[:, 1:]).
    mask is bool or 0/1. Per token l_t = -A * C(p_t) * log p_t; see _aggregate for agg.
    Returns a float32 scalar (float64 for float64 inputs).
    """
    m = _check_batch("gft_loss", logprobs, mask, advantages)
    lp = torch.where(m, _float(logprobs), 0.0)              # (N, T), padding zeroed (dev. 8)
    C = dcr_coefficient(lp, tau)                            # (N, T), no grad
    A = _float(advantages)[:, None]                         # (N, 1): every token of y shares A(y)
    loss_mat = -A * C * lp                                  # minus: minimising ascends A*C*log p
    return _aggregate(loss_mat, m, agg)


def _aggregate(loss_mat, m, agg):
    """Scalar from per-token losses (N, T) under the bool mask m (N, T).

    token-mean: sum over all masked tokens / their number (verl default). Every token weighs
      the same, so a long response gets more total weight than a short one.
    seq-mean-token-mean: mean over each response's tokens, then mean over responses with at
      least one token. Every response weighs the same, so a token of a short response weighs
      more than a token of a long one.
    seq-mean-token-sum: sum over each response's tokens, then mean over those responses. The
      loss scale grows with length; long responses dominate.
    """
    if agg not in AGGS:
        raise ValueError(f"agg must be one of {AGGS}, got {agg!r}")
    loss_mat = torch.where(m, loss_mat, 0.0)
    if agg == "token-mean":
        return loss_mat.sum() / m.sum()
    n_tok = m.sum(1)                                        # (N,) tokens per response
    seq = loss_mat.sum(1)                                   # (N,)
    if agg == "seq-mean-token-mean":
        seq = seq / n_tok.clamp(min=1)
    return seq[n_tok > 0].mean()                            # empty responses count for nothing


# -----------------------------------------------------------------------------
# (4): group advantages (GAL)

def group_advantages(rewards, eps=1e-6, scale=True, mask=None):
    """Advantages (P, K) from rewards (P, K), prompts x group members, eq. (4):

        A_i = (r_i - mean r) / (std r + eps)    over the members i of each group (each row)

    The rest is edge cases. scale=True: (r - mean) / (std + eps) with the sample std (Bessel), as verl's grpo
    estimator; scale=False: r - mean (Dr. GRPO). mask (P, K) marks the members present
    (ragged groups); absent members get A = 0 and are left out of mean and std. A group of
    one member gets A = r (deviation 3); a group of >= 2 equal rewards gets A = 0 exactly.
    """
    fn = "group_advantages"
    if not (math.isfinite(eps) and eps > 0):  # eps <= 0 can divide by 0 or flip signs; NaN spreads
        raise ValueError(f"{fn}: eps must be finite and > 0, got {eps}")
    if rewards.dim() != 2:
        raise ValueError(f"{fn}: rewards must be (P, K), got shape {tuple(rewards.shape)}")
    m = torch.ones_like(rewards, dtype=torch.bool) if mask is None else _bool_mask(fn, mask, rewards.shape)
    r = _float(rewards)
    if not torch.isfinite(r[m]).all():
        raise ValueError(f"{fn}: rewards contain NaN or inf")
    n = m.sum(1, keepdim=True)                              # (P, 1) group sizes
    if (n == 0).any():
        raise ValueError(f"{fn}: group {int((n[:, 0] == 0).nonzero()[0])} has no members")
    r = torch.where(m, r, 0.0)                              # absent slots may hold NaN padding
    nf = n.to(r.dtype)
    mean = r.sum(1, keepdim=True) / nf                      # (P, 1)
    dev = torch.where(m, r - mean, 0.0)                     # (P, K)
    std = (dev.pow(2).sum(1, keepdim=True) / (nf - 1).clamp(min=1)).sqrt()  # Bessel: / (n - 1)
    adv = dev / (std + eps) if scale else dev
    single = n == 1                                         # (P, 1)
    equal = _equal_groups(r, m)                             # (P, 1)
    adv = torch.where(single, r, adv)                       # verl: mean 0, std 1
    return torch.where(m & ~equal, adv, 0.0)


def _equal_groups(r, m):
    """(P, 1) bool: groups of >= 2 present members (mask m) whose rewards r (P, K) are all equal.

    Compared exactly as given, so a caller that passes the tensor group_advantages used gets the
    groups whose A was forced to 0.
    """
    first = r.gather(1, m.to(torch.int8).argmax(1, keepdim=True))  # (P, 1) first present reward
    return torch.where(m, r == first, True).all(1, keepdim=True) & (m.sum(1, keepdim=True) >= 2)


# -----------------------------------------------------------------------------
# baselines: SFT, DFT and GRPO as limiting cases, and SFT as a policy gradient (1)-(3)

def sft_loss(logprobs, mask):
    """SFT cross-entropy: -log p_t, token mean. GFT with tau = 0 (C = 1) and A = 1."""
    return gft_loss(logprobs, logprobs.new_ones(logprobs.shape[0]), mask, tau=0.0)


def dft_loss(logprobs, mask):
    """DFT (arXiv 2508.05629): -sg(p_t) log p_t, token mean. GFT with tau = 1 and A = 1."""
    return gft_loss(logprobs, logprobs.new_ones(logprobs.shape[0]), mask, tau=1.0)


def grpo_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0.2, ref_logprobs=None,
              beta=0.0, agg="token-mean"):
    """GRPO baseline: PPO clipped surrogate plus beta * k3 KL; scalar from (N, T) tensors.

    Per token: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A), ratio = pi / pi_old
    (old detached), plus beta * k3 with k3 = exp(ref - lp) - (ref - lp) - 1, Schulman's
    unbiased, non-negative estimator of KL(pi || pi_ref). Aggregated as gft_loss.
    """
    fn = "grpo_loss"
    m = _check_batch(fn, logprobs, mask, advantages)
    _check_logprobs(fn, "old_logprobs", old_logprobs, m)
    if not 0.0 < clip_eps < 1.0:
        raise ValueError(f"{fn}: clip_eps must be in (0, 1), got {clip_eps}")
    if not (math.isfinite(beta) and beta >= 0.0):  # inf times a k3 of 0 is NaN; NaN spreads
        raise ValueError(f"{fn}: beta must be finite and >= 0, got {beta}")
    if beta > 0.0 and ref_logprobs is None:
        raise ValueError(f"{fn}: beta = {beta} > 0 needs ref_logprobs")
    lp = torch.where(m, _float(logprobs), 0.0)                         # (N, T)
    old = torch.where(m, _float(old_logprobs.detach()), 0.0)           # (N, T), no grad
    A = _float(advantages)[:, None]                                    # (N, 1)
    ratio = (lp - old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()  # (N, T)
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss_mat = -torch.minimum(ratio * A, clipped * A)  # minus: minimise; min = pessimistic bound
    if ref_logprobs is not None and beta > 0.0:
        _check_logprobs(fn, "ref_logprobs", ref_logprobs, m)
        ref = torch.where(m, _float(ref_logprobs.detach()), 0.0)
        d = (ref - lp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)       # log(pi_ref / pi)
        loss_mat = loss_mat + beta * (d.exp() - d - 1.0)               # plus: penalise drift
    return _aggregate(loss_mat, m, agg)


def implicit_reward(seq_logprobs, p_exp):
    """r(y) = p_exp(y) / sg(pi(y)), eq. (3); (S,) -> (S,), no grad. One demo: 1[y=y*]/pi(y*)."""
    _check_support("implicit_reward", seq_logprobs, p_exp)
    pi = seq_logprobs.detach().exp()                       # (S,)
    # r = 0 where p_exp = 0, however small pi is: p_exp / pi would be 0/0 = NaN once pi underflows to 0
    return torch.where(p_exp > 0, p_exp / pi, 0.0)


def sft_as_policy_gradient_loss(seq_logprobs, p_exp):
    """REINFORCE surrogate whose gradient is exactly SFT's, over a finite support of S outputs.

    seq_logprobs (S,): log pi(y) with grad, for every y of an enumerated support.
    p_exp (S,): the demonstration distribution (one-hot for a single demonstration y*).
    Loss = -sum_y sg(pi(y)) * r(y) * log pi(y), i.e. the expectation over y ~ pi of
    -r(y) log pi(y). Since sg(pi(y)) * r(y) = p_exp(y), its gradient is
    -sum_y p_exp(y) grad log pi(y) = grad L_SFT: eq. (1) = eq. (2). Applied to one position
    (S = vocabulary, pi = pi(.|x, y_<t)) it is the per-token form of the same identity.
    """
    fn = "sft_as_policy_gradient_loss"
    _check_support(fn, seq_logprobs, p_exp)
    pi = seq_logprobs.detach().exp()                       # (S,) sampling weights, no grad
    r = implicit_reward(seq_logprobs, p_exp)               # (S,)
    if not torch.isfinite(r).all():  # pi(y) of a demonstration so small that 1/pi overflows
        raise ValueError(f"{fn}: implicit reward is inf: a demonstrated output has pi(y) ~ 0,"
                         f" min log pi(y) over p_exp > 0 is {seq_logprobs[p_exp > 0].min().item():.4g}")
    return -(pi * r * seq_logprobs).sum()                  # minus: minimise = ascend E_pi[r log pi]


# -----------------------------------------------------------------------------
# groups: expert, teacher and rollout responses to one prompt, flattened for the model

@dataclass
class Response:
    tokens: list          # response token ids (the end-of-text token included if present)
    source: str           # one of SOURCES
    reward: float = 0.0   # verifier score R(y)


@dataclass
class Group:
    prompt: list          # prompt token ids, non-empty (it predicts the first response token)
    responses: list       # list[Response], the group G_x


@dataclass
class GroupBatch:
    tokens: torch.Tensor       # (N, L) long: prompt + response, right-padded with pad_id
    resp_mask: torch.Tensor    # (N, L) bool: True at response tokens; loss mask is [:, 1:]
    rewards: torch.Tensor      # (N,) float32
    advantages: torch.Tensor   # (N,) float32, eq. (4) within each group
    group_index: torch.Tensor  # (N,) long: which group (prompt) each row belongs to
    sources: list              # list[str] of length N
    zero_var: torch.Tensor     # (P,) bool: groups of >= 2 equal rewards (all A = 0)

    @property
    def frac_zero_var(self):
        return self.zero_var.float().mean().item()


def count_sources(n_expert, n_teacher, n_rollout):
    """Validate the group composition settings; return the group size K."""
    counts = {"n_expert": n_expert, "n_teacher": n_teacher, "n_rollout": n_rollout}
    for name, c in counts.items():
        if not isinstance(c, int) or isinstance(c, bool) or c < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {c!r}")
    if sum(counts.values()) == 0:
        raise ValueError("n_expert + n_teacher + n_rollout must be > 0, got 0 (empty groups)")
    return sum(counts.values())


def flatten_groups(groups, pad_id, eps=1e-6, scale=True):
    """Flatten P groups into N rows (group by group, responses in the order given).

    The caller runs the model on batch.tokens, takes the (N, L-1) log-probs of
    tokens[:, 1:] and uses batch.resp_mask[:, 1:] as the loss mask.
    """
    if len(groups) == 0:
        raise ValueError("flatten_groups: no groups")
    rows, rewards, group_index, sources = [], [], [], []
    for i, g in enumerate(groups):
        if len(g.prompt) == 0:
            raise ValueError(f"flatten_groups: group {i} has an empty prompt")
        if len(g.responses) == 0:
            raise ValueError(f"flatten_groups: group {i} has no responses")
        for j, r in enumerate(g.responses):
            if r.source not in SOURCES:
                raise ValueError(f"flatten_groups: group {i} response {j} has source {r.source!r},"
                                 f" not one of {SOURCES}")
            if not math.isfinite(r.reward):
                raise ValueError(f"flatten_groups: group {i} response {j} has reward {r.reward}")
            if len(r.tokens) == 0:
                raise ValueError(f"flatten_groups: group {i} response {j} has no tokens")
            rows.append((list(g.prompt), list(r.tokens)))
            rewards.append(float(r.reward))
            group_index.append(i)
            sources.append(r.source)
    N, L = len(rows), max(len(p) + len(y) for p, y in rows)
    tokens = torch.full((N, L), pad_id, dtype=torch.long)
    resp_mask = torch.zeros(N, L, dtype=torch.bool)
    for n, (p, y) in enumerate(rows):
        tokens[n, :len(p) + len(y)] = torch.tensor(p + y, dtype=torch.long)
        resp_mask[n, len(p):len(p) + len(y)] = True
    # rewards as a ragged (P, K) matrix for group_advantages, then back to (N,) in row order
    P, K = len(groups), max(len(g.responses) for g in groups)
    present = torch.tensor([[k < len(g.responses) for k in range(K)] for g in groups])  # (P, K)
    R = torch.zeros(P, K)
    R[present] = torch.tensor(rewards)
    advantages = group_advantages(R, eps=eps, scale=scale, mask=present)[present]  # (N,)
    # from the float32 R the advantages used, not the Python floats: 0.1 + 0.2 and 0.3 differ as
    # floats but not in float32, where their A is forced to 0; zero_var must say the same
    zero_var = _equal_groups(R, present)[:, 0]              # (P,)
    return GroupBatch(tokens, resp_mask, torch.tensor(rewards), advantages,
                      torch.tensor(group_index), sources, zero_var)


# -----------------------------------------------------------------------------
# diagnostics: computed apart from the loss, no grad, plain floats for logging

@torch.no_grad()
def dcr_stats(logprobs, mask, tau):
    """How much DCR rectifies, over the masked tokens of (N, T) logprobs."""
    m = _check_batch("dcr_stats", logprobs, mask)
    lp = logprobs.detach().double()[m]                      # (n_tokens,)
    p = lp.exp()
    C = dcr_coefficient(lp, tau)
    eff = torch.where(p < tau, 1.0, (-lp).exp())            # C / p without 0/0; inf for tiny p at tau=0
    return {"frac_below_tau": (p < tau).double().mean().item(),
            "mean_coef": C.mean().item(),
            "mean_eff_weight": eff.mean().item()}


def source_stats(batch):
    """Mean reward and advantage per source present, and the zero-variance group fraction."""
    out = {}
    for s in SOURCES:
        rows = torch.tensor([src == s for src in batch.sources])
        if rows.any():
            out[f"reward/{s}"] = batch.rewards[rows].mean().item()
            out[f"adv/{s}"] = batch.advantages[rows].mean().item()
    out["frac_zero_var"] = batch.frac_zero_var
    return out


# -----------------------------------------------------------------------------
# input checks: every loss fails loudly, naming the problem

def _float(t):
    # compute dtype: float32, or float64 when given float64 (bfloat16 is too coarse for sums)
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _bool_mask(fn, mask, shape, name="mask"):
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{fn}: {name} shape {tuple(mask.shape)} != expected {tuple(shape)}")
    if mask.dtype == torch.bool:
        return mask
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"{fn}: {name} must be bool or hold only 0/1, got other values")
    return mask != 0


def _check_logprobs(fn, name, lp, m):
    # only positions under the mask must be valid: padding may hold anything
    if tuple(lp.shape) != tuple(m.shape):
        raise ValueError(f"{fn}: {name} shape {tuple(lp.shape)} != mask shape {tuple(m.shape)}")
    if not torch.isfinite(lp[m]).all():
        raise ValueError(f"{fn}: {name} contain NaN or inf under the mask")
    if (lp[m] > LOGPROB_TOL).any():
        raise ValueError(f"{fn}: {name} must be <= 0 (log-probabilities), max is {lp[m].max().item():.3g}")


def _check_batch(fn, logprobs, mask, advantages=None):
    """Validate a (N, T) batch; return the bool mask (N, T)."""
    if logprobs.dim() != 2:
        raise ValueError(f"{fn}: logprobs must be (N, T), got shape {tuple(logprobs.shape)}")
    if tuple(mask.shape) != tuple(logprobs.shape):
        raise ValueError(f"{fn}: logprobs shape {tuple(logprobs.shape)} != mask shape {tuple(mask.shape)}")
    m = _bool_mask(fn, mask, logprobs.shape)
    if not m.any():
        raise ValueError(f"{fn}: mask selects no response tokens")
    _check_logprobs(fn, "logprobs", logprobs, m)
    if advantages is not None:
        if tuple(advantages.shape) != (logprobs.shape[0],):
            raise ValueError(f"{fn}: advantages shape {tuple(advantages.shape)} != ({logprobs.shape[0]},)"
                             " (one advantage per response)")
        if not torch.isfinite(advantages).all():
            raise ValueError(f"{fn}: advantages contain NaN or inf")
    return m


def _check_support(fn, seq_logprobs, p_exp):
    """Validate (S,) log pi(y) over an enumerated support and the distribution p_exp (S,)."""
    if seq_logprobs.shape != p_exp.shape or seq_logprobs.dim() != 1:
        raise ValueError(f"{fn}: seq_logprobs shape {tuple(seq_logprobs.shape)}"
                         f" and p_exp shape {tuple(p_exp.shape)} must be the same (S,)")
    _check_logprobs(fn, "seq_logprobs", seq_logprobs, torch.ones_like(seq_logprobs, dtype=torch.bool))
    if not ((p_exp >= 0).all() and abs(p_exp.sum().item() - 1.0) <= 1e-4):  # NaN fails both
        raise ValueError(f"{fn}: p_exp must be a distribution (>= 0, sums to 1)")


def _check_tau(fn, tau):
    if not (0.0 <= float(tau) <= 1.0):  # also rejects NaN
        raise ValueError(f"{fn}: tau must be in [0, 1], got {tau}")
