"""Property tests for gft.py: limiting cases, the SFT identity, DCR bounds, advantages,
vectorised losses against slow loops, group construction, numerical safety, errors.

Random tensors come from a torch.Generator seeded by hypothesis, so every failure is
reproducible from the printed example. float64 where values are compared exactly. Hypothesis
runs derandomized, as in the other files (a test run is deterministic); with fresh randomness,
14,000 examples per test over 5 seeds found no failure (2026-12-01).
"""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings, strategies as st

from gft import (AGGS, SOURCES, Group, Response, count_sources, dcr_coefficient, dcr_stats,
                 dft_loss, flatten_groups, gft_loss, group_advantages, grpo_loss, implicit_reward,
                 sft_as_policy_gradient_loss, sft_loss, source_stats)

FAST = settings(max_examples=40, deadline=None, derandomize=True)
seeds = st.integers(0, 2**31 - 1)


def chosen_logprobs(logits, targets):
    """(N, T, V) logits, (N, T) targets -> (N, T) log pi of the targets."""
    return logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)


def random_batch(seed, N, T, V, scale=3.0, p_mask=0.7):
    """Logits (N, T, V) leaf float64, targets (N, T), mask (N, T) bool with >= 1 token."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, T, V, generator=g, dtype=torch.float64) * scale).requires_grad_()
    targets = torch.randint(V, (N, T), generator=g)
    mask = torch.rand(N, T, generator=g) < p_mask
    mask[torch.randint(N, (), generator=g), torch.randint(T, (), generator=g)] = True
    return logits, targets, mask, g


def grad_of(loss, x):
    (g,) = torch.autograd.grad(loss, x, retain_graph=True)
    return g


@st.composite
def group_lists(draw, sources=st.sampled_from(SOURCES), rewards=st.sampled_from([0.0, 1.0, 0.5]),
                max_groups=4, max_k=5, vocab=6):
    tok = st.integers(0, vocab - 1)
    groups = []
    for _ in range(draw(st.integers(1, max_groups))):
        prompt = draw(st.lists(tok, min_size=1, max_size=4))
        resps = [Response(draw(st.lists(tok, min_size=1, max_size=4)), draw(sources), draw(rewards))
                 for _ in range(draw(st.integers(1, max_k)))]
        groups.append(Group(prompt, resps))
    return groups


# -----------------------------------------------------------------------------
# 1-3: limiting cases

@FAST
@given(group_lists(sources=st.just("expert"), rewards=st.just(1.0), max_k=1), seeds)
def test_gft_equals_sft_when_tau_zero_and_expert_only(groups, seed):
    batch = flatten_groups(groups, pad_id=0)
    assert (batch.advantages == 1.0).all()  # size-1 groups: A = r = 1
    N, L = batch.tokens.shape
    logits = torch.randn(N, L - 1, 6, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64).requires_grad_()
    targets, m = batch.tokens[:, 1:], batch.resp_mask[:, 1:]  # position t predicts token t+1
    loss = gft_loss(chosen_logprobs(logits, targets), batch.advantages, m, tau=0.0)
    ce = F.cross_entropy(logits[m], targets[m])
    torch.testing.assert_close(loss, ce)
    torch.testing.assert_close(grad_of(loss, logits), grad_of(ce, logits))


@FAST
@given(seeds, st.integers(1, 4), st.integers(1, 6), st.integers(2, 5))
def test_gft_gradient_equals_dft_times_advantage_when_tau_one(seed, N, T, V):
    logits, targets, mask, g = random_batch(seed, N, T, V)
    A = torch.randn(N, generator=g, dtype=torch.float64)
    lp = chosen_logprobs(logits, targets)
    loss = gft_loss(lp, A, mask, tau=1.0)
    g_gft, g_dft = grad_of(loss, logits), grad_of(dft_loss(lp, mask), logits)  # (N, T, V)
    torch.testing.assert_close(g_gft, A[:, None, None] * g_dft)
    p = lp.detach().exp()
    expected = (-A[:, None] * p * lp.detach())[mask].sum() / mask.sum()
    torch.testing.assert_close(loss.detach(), expected)


@FAST
@given(group_lists(sources=st.just("rollout"), rewards=st.sampled_from([0.0, 1.0])), seeds,
       st.sampled_from(AGGS))
def test_gft_gradient_equals_grpo_when_tau_zero_on_policy_rollouts(groups, seed, agg):
    batch = flatten_groups(groups, pad_id=0)
    N, L = batch.tokens.shape
    logits = torch.randn(N, L - 1, 6, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64).requires_grad_()
    m = batch.resp_mask[:, 1:]
    lp = chosen_logprobs(logits, batch.tokens[:, 1:])
    g_gft = grad_of(gft_loss(lp, batch.advantages, m, tau=0.0, agg=agg), logits)
    # old_logprobs passed with grad: grpo_loss must detach it itself, else ratio == 1 has no grad
    g_grpo = grad_of(grpo_loss(lp, lp, batch.advantages, m, beta=0.0, agg=agg), logits)
    torch.testing.assert_close(g_gft, g_grpo)


# -----------------------------------------------------------------------------
# 4: SFT is a policy gradient with implicit reward p_exp / pi, checked by enumeration

def tiny_policy(V, T, seed):
    """An autoregressive policy as a table: one logit row (V,) per prefix of length < T."""
    prefixes = [p for t in range(T) for p in itertools.product(range(V), repeat=t)]
    index = {p: i for i, p in enumerate(prefixes)}
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(len(prefixes), V, generator=g, dtype=torch.float64) * 2).requires_grad_()
    def token_logprobs(prefix):  # (V,) log pi(. | prefix)
        return W[index[tuple(prefix)]].log_softmax(-1)
    def seq_logprob(y):  # scalar log pi(y) = sum_t log pi(y_t | y_<t)
        return sum(token_logprobs(y[:t])[y[t]] for t in range(T))
    return W, token_logprobs, seq_logprob, g


@FAST
@given(seeds, st.integers(2, 4), st.integers(1, 3), st.integers(1, 3))
def test_sft_gradient_equals_implicit_reward_policy_gradient_by_enumeration(seed, V, T, n_demos):
    W, token_logprobs, seq_logprob, g = tiny_policy(V, T, seed)
    support = list(itertools.product(range(V), repeat=T))
    seq_lps = torch.stack([seq_logprob(y) for y in support])  # (S,), S = V**T
    torch.testing.assert_close(seq_lps.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    # one demonstration y*: surrogate gradient == grad of -log pi(y*)
    star = int(torch.randint(len(support), (), generator=g))
    onehot = F.one_hot(torch.tensor(star), len(support)).double()
    surrogate = sft_as_policy_gradient_loss(seq_lps, onehot)
    torch.testing.assert_close(grad_of(surrogate, W), grad_of(-seq_lps[star], W))
    torch.testing.assert_close(implicit_reward(seq_lps, onehot)[star], 1 / seq_lps[star].detach().exp())
    # several demonstrations: p_exp a distribution over the support
    idx = torch.randint(len(support), (n_demos,), generator=g)
    p_exp = torch.zeros(len(support), dtype=torch.float64).index_add_(
        0, idx, torch.rand(n_demos, generator=g, dtype=torch.float64) + 0.1)
    p_exp = p_exp / p_exp.sum()
    sft = -(p_exp * seq_lps).sum()
    surrogate = sft_as_policy_gradient_loss(seq_lps, p_exp)
    torch.testing.assert_close(surrogate, sft)
    torch.testing.assert_close(grad_of(surrogate, W), grad_of(sft, W))
    # per-token form: at each position, support = vocabulary, pi = pi(. | y*_<t)
    y = support[star]
    per_token = sum(sft_as_policy_gradient_loss(token_logprobs(y[:t]),
                                                F.one_hot(torch.tensor(y[t]), V).double())
                    for t in range(T))
    torch.testing.assert_close(grad_of(per_token, W), grad_of(-seq_logprob(y), W))
    # and GFT with tau = 0, A = 1 over the T tokens of y* is the same gradient / T (token mean)
    lp = torch.stack([token_logprobs(y[:t])[y[t]] for t in range(T)])[None]  # (1, T)
    gft = gft_loss(lp, torch.ones(1, dtype=torch.float64), torch.ones(1, T, dtype=torch.bool), tau=0.0)
    torch.testing.assert_close(grad_of(gft, W) * T, grad_of(-seq_logprob(y), W))


@FAST
@given(seeds, st.integers(2, 6), st.sampled_from([-30.0, -120.0, -800.0, -1e4]),
       st.sampled_from([torch.float32, torch.float64]))
def test_implicit_reward_is_zero_off_the_demonstrations_even_where_pi_underflows(seed, S, low, dtype):
    g = torch.Generator().manual_seed(seed)
    demo = torch.randperm(S, generator=g) < int(torch.randint(1, S, (), generator=g))  # (S,), 1..S-1 demos
    p_exp = torch.where(demo, torch.rand(S, generator=g) + 0.1, 0.0).to(dtype)
    p_exp = p_exp / p_exp.sum()
    # demonstrations likely; the rest down to `low`, where exp underflows to 0 (float32 below ~ -104)
    lp = torch.where(demo, -torch.rand(S, generator=g) * 3, low * (0.5 + torch.rand(S, generator=g)))
    lp = lp.to(dtype).requires_grad_()
    slow_r, slow_loss = [], 0.0
    for y in range(S):  # r(y) = p_exp(y) / pi(y) where y is demonstrated, else exactly 0
        r = p_exp[y] / lp[y].detach().exp() if p_exp[y] > 0 else torch.zeros((), dtype=dtype)
        slow_r.append(r)
        if p_exp[y] > 0:  # an undemonstrated y adds 0 to the loss and its gradient
            slow_loss = slow_loss - lp[y].detach().exp() * r * lp[y]
    assert torch.equal(implicit_reward(lp, p_exp), torch.stack(slow_r))
    fast = sft_as_policy_gradient_loss(lp, p_exp)
    assert torch.isfinite(fast) and torch.isfinite(grad_of(fast, lp)).all()
    torch.testing.assert_close(fast, slow_loss)
    torch.testing.assert_close(grad_of(fast, lp), grad_of(slow_loss, lp))
    torch.testing.assert_close(grad_of(fast, lp), -p_exp)  # SFT's gradient, eq. (1)


# -----------------------------------------------------------------------------
# 5: DCR bounds the update

@FAST
@given(seeds, st.integers(1, 4), st.integers(1, 6), st.integers(2, 6), st.floats(0.0, 1.0))
def test_dcr_gradient_never_exceeds_sft_and_equals_it_above_tau(seed, N, T, V, tau):
    logits, targets, mask, _ = random_batch(seed, N, T, V)
    lp = chosen_logprobs(logits, targets)
    g_gft = grad_of(gft_loss(lp, torch.ones(N, dtype=torch.float64), mask, tau), logits)
    g_sft = grad_of(sft_loss(lp, mask), logits)
    n_gft, n_sft = g_gft.norm(dim=-1), g_sft.norm(dim=-1)  # (N, T) per-token norms w.r.t. logits
    assert (n_gft <= n_sft * (1 + 1e-12)).all()
    p = lp.detach().exp()
    above = mask & (p >= tau)
    torch.testing.assert_close(g_gft[above], g_sft[above], rtol=0, atol=0)
    below = mask & (p < tau)  # scaled by C = p exactly
    torch.testing.assert_close(g_gft[below], p[below][:, None] * g_sft[below])


@FAST
@given(seeds, st.integers(1, 4), st.integers(1, 6), st.floats(0.01, 1.0))
def test_dcr_effective_weight_never_exceeds_max_one_and_inverse_tau(seed, N, T, tau):
    g = torch.Generator().manual_seed(seed)
    lp0 = -torch.rand(N, T, generator=g, dtype=torch.float64) * 20  # p from ~2e-9 to 1
    p = lp0.exp().requires_grad_()
    mask = torch.ones(N, T, dtype=torch.bool)
    loss = gft_loss(p.log(), torch.ones(N, dtype=torch.float64), mask, tau)
    eff = -grad_of(loss, p) * mask.sum()  # dl/dp * count = C / p, the inverse-probability weight
    bound = max(1.0, 1.0 / tau)
    assert (eff <= bound * (1 + 1e-12)).all()
    torch.testing.assert_close(eff, dcr_coefficient(lp0, tau) / lp0.exp())
    stats = dcr_stats(lp0, mask, tau)
    assert stats["mean_eff_weight"] <= bound * (1 + 1e-12)
    assert stats["frac_below_tau"] == pytest.approx((lp0.exp() < tau).double().mean().item())
    assert stats["mean_coef"] == pytest.approx(dcr_coefficient(lp0, tau).mean().item())


@FAST
@given(seeds, st.integers(1, 4), st.integers(1, 6), st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_dcr_stats_equal_slow_loop_including_p_equal_to_tau(seed, N, T, tau):
    _, _, mask, g = random_batch(seed, N, T, 2)
    lp = -torch.rand(N, T, generator=g, dtype=torch.float64) * 20
    if tau is None:  # a tie: tau is exactly the p of one masked token, which keeps C = 1
        n, t = mask.nonzero()[int(torch.randint(int(mask.sum()), (), generator=g))]
        tau = lp[n, t].exp().item()
    below, coef, eff = [], [], []
    for n in range(N):
        for t in range(T):
            if mask[n, t]:
                p = lp[n, t].exp().item()
                below.append(p < tau)
                coef.append(p if p < tau else 1.0)
                eff.append(coef[-1] / p)  # C / p: 1 below tau, 1/p at or above it
    stats = dcr_stats(lp, mask, tau)
    assert stats["frac_below_tau"] == pytest.approx(sum(below) / len(below), rel=1e-12)
    assert stats["mean_coef"] == pytest.approx(sum(coef) / len(coef), rel=1e-12)
    assert stats["mean_eff_weight"] == pytest.approx(sum(eff) / len(eff), rel=1e-12)


def test_dcr_coefficient_limits_and_threshold():
    lp = torch.tensor([0.0, math.log(0.5), math.log(0.1), -1e4])
    assert (dcr_coefficient(lp, 0.0) == 1).all()  # tau = 0: SFT weights
    torch.testing.assert_close(dcr_coefficient(lp, 1.0), lp.exp())  # tau = 1: DFT weights
    c = dcr_coefficient(torch.tensor([math.log(0.5)], dtype=torch.float64), 0.5)
    assert c.item() == 1.0  # p == tau keeps 1 (paper's >=; official code's strict > gives p)
    assert not dcr_coefficient(lp.requires_grad_(), 0.5).requires_grad


# -----------------------------------------------------------------------------
# 6: group advantages

@st.composite
def reward_groups(draw, min_k=2, max_k=8):
    """(P, K) float64 rewards with at least two distinct values per row."""
    P, K = draw(st.integers(1, 4)), draw(st.integers(min_k, max_k))
    rows = []
    for _ in range(P):
        row = draw(st.lists(st.integers(-3, 3), min_size=K, max_size=K).filter(lambda r: len(set(r)) > 1))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


@FAST
@given(reward_groups())
def test_advantages_have_zero_group_mean_and_unit_sample_std(r):
    A = group_advantages(r)
    torch.testing.assert_close(A.mean(1), torch.zeros(r.shape[0], dtype=torch.float64))
    std_r = r.std(1)  # Bessel
    torch.testing.assert_close(A.std(1), std_r / (std_r + 1e-6))  # = 1 up to eps
    assert ((A.std(1) - 1).abs() < 1e-5).all()
    torch.testing.assert_close(group_advantages(r, scale=False), r - r.mean(1, keepdim=True))


@FAST
@given(reward_groups(), st.floats(0.5, 20.0), st.floats(-10.0, 10.0))
def test_advantages_invariant_to_affine_reward_transform(r, a, b):
    torch.testing.assert_close(group_advantages(a * r + b), group_advantages(r), rtol=0, atol=1e-4)


@FAST
@given(reward_groups(), seeds)
def test_advantages_permutation_equivariant_within_group(r, seed):
    perm = torch.randperm(r.shape[1], generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(group_advantages(r[:, perm]), group_advantages(r)[:, perm])


@FAST
@given(st.integers(1, 4), st.integers(2, 8), st.sampled_from([0.0, 1.0, 0.1, -0.7, 1e6]),
       st.booleans(), st.sampled_from([torch.float32, torch.float64]))
def test_advantages_exactly_zero_when_rewards_equal(P, K, value, scale, dtype):
    A = group_advantages(torch.full((P, K), value, dtype=dtype), scale=scale)
    assert (A == 0).all()


def slow_advantages(rows, scale, eps=1e-6):
    """Eq. (4) group by group in Python floats; rows: list of reward lists."""
    out = []
    for row in rows:
        n, mean = len(row), sum(row) / len(row)
        if n == 1:
            out.append(list(row))
        elif all(x == row[0] for x in row):
            out.append([0.0] * n)
        else:
            std = math.sqrt(sum((x - mean) ** 2 for x in row) / (n - 1))
            out.append([(x - mean) / (std + eps) if scale else x - mean for x in row])
    return out


@st.composite
def mixed_reward_rows(draw, values=(0.1, 0.3, 0.7)):
    """(rows, constant): 2..5 groups of one size K in 2..8, some constant, some varying."""
    K = draw(st.integers(2, 8))
    constant = draw(st.lists(st.booleans(), min_size=2, max_size=5).filter(lambda c: any(c) and not all(c)))
    rows = [[draw(st.sampled_from(values))] * K if c else
            draw(st.lists(st.sampled_from(values), min_size=K, max_size=K).filter(lambda r: len(set(r)) > 1))
            for c in constant]
    return rows, constant


@FAST
@given(mixed_reward_rows(), st.booleans(), st.sampled_from([torch.float32, torch.float64]))
@example(([[0.1] * 3, [0.1, 0.3, 0.7]], [True, False]), True, torch.float64)
def test_advantages_zero_only_in_constant_groups_of_a_mixed_batch(rows_constant, scale, dtype):
    # 0.1, 0.3, 0.7 have inexact means at some K (0.1 at K = 3 in float64, 7 in float32), so a
    # constant group gets A = 0 only through the check made group by group, not through r - mean
    rows, constant = rows_constant
    r = torch.tensor(rows, dtype=dtype)
    A = group_advantages(r, scale=scale)
    slow = torch.tensor(slow_advantages(r.tolist(), scale), dtype=dtype)  # from the values r holds
    for i, c in enumerate(constant):
        if c:
            assert (A[i] == 0).all()
        else:
            torch.testing.assert_close(A[i], slow[i])


@FAST
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=6), st.booleans())
def test_advantages_size_one_group_is_reward(values, scale):
    r = torch.tensor(values, dtype=torch.float64)[:, None]  # (P, 1)
    assert torch.equal(group_advantages(r, scale=scale), r)


@FAST
@given(st.lists(st.lists(st.sampled_from([0.0, 1.0, 0.5, 2.0]), min_size=1, max_size=6),
                min_size=1, max_size=5), st.booleans())
def test_ragged_advantages_equal_per_group_computation(groups, scale):
    K = max(len(g) for g in groups)
    r = torch.full((len(groups), K), float("nan"), dtype=torch.float64)  # NaN padding must not leak
    mask = torch.zeros(len(groups), K, dtype=torch.bool)
    for i, g in enumerate(groups):
        r[i, :len(g)] = torch.tensor(g, dtype=torch.float64)
        mask[i, :len(g)] = True
    A = group_advantages(r, scale=scale, mask=mask)
    for i, g in enumerate(groups):
        alone = group_advantages(torch.tensor([g], dtype=torch.float64), scale=scale)[0]
        assert torch.equal(A[i, :len(g)], alone)
        assert (A[i, len(g):] == 0).all()


@st.composite
def scattered_groups(draw, values=(0.1, 0.3, 0.7, 1.0)):
    """(groups, slots, K): reward lists and, for each, the sorted slots of a row of K it occupies.

    Members may sit anywhere in the row, with absent slots before, between and after them.
    """
    groups = draw(st.lists(st.lists(st.sampled_from(values), min_size=1, max_size=5), min_size=1, max_size=4))
    K = max(len(g) for g in groups) + draw(st.integers(0, 3))
    slots = [sorted(draw(st.permutations(range(K)))[:len(g)]) for g in groups]
    return groups, slots, K


@FAST
@given(scattered_groups(), st.booleans())
@example(([[0.1, 0.1, 0.1]], [[1, 2, 3]], 4), True)  # slot 0 absent; 0.1 has an inexact mean at 3
@example(([[0.1, 0.1, 0.1]], [[1, 2, 3]], 4), False)
def test_ragged_advantages_do_not_depend_on_where_the_absent_slots_are(groups_slots_k, scale):
    """The mask marks the members present wherever they are in the row, not only a prefix: read at
    its present slots, a group's advantages are those of the group alone (up to rounding: the sums
    run over K slots), and absent slots get 0. A constant group is 0 exactly even when its first
    slot is absent: the equality check must start from the first member present, not from column 0
    (which holds padding)."""
    groups, slots, K = groups_slots_k
    r = torch.full((len(groups), K), float("nan"), dtype=torch.float64)  # NaN padding must not leak
    mask = torch.zeros(len(groups), K, dtype=torch.bool)
    for i, (g, s) in enumerate(zip(groups, slots)):
        r[i, s] = torch.tensor(g, dtype=torch.float64)
        mask[i, s] = True
    A = group_advantages(r, scale=scale, mask=mask)
    for i, g in enumerate(groups):
        if len(g) >= 2 and len(set(g)) == 1:
            assert (A[i] == 0).all()  # exactly, not the rounding of r - mean
            continue
        alone = group_advantages(torch.tensor([g], dtype=torch.float64), scale=scale)[0]
        torch.testing.assert_close(A[i, mask[i]], alone)  # the sum over K slots may round apart
        assert (A[i, ~mask[i]] == 0).all()


# -----------------------------------------------------------------------------
# 7: vectorised losses against slow loops

def slow_aggregate(rows, agg):
    """rows: per response, the list of its masked per-token losses (scalar tensors)."""
    if agg == "token-mean":
        toks = [l for row in rows for l in row]
        return sum(toks) / len(toks)
    seqs = [sum(row) / (len(row) if agg == "seq-mean-token-mean" else 1) for row in rows if row]
    return sum(seqs) / len(seqs)


def slow_gft(lp, A, mask, tau, agg):
    rows = []
    for n in range(lp.shape[0]):
        row = []
        for t in range(lp.shape[1]):
            if mask[n, t]:
                p = math.exp(lp[n, t].item())
                c = p if p < tau else 1.0
                row.append(-A[n].item() * c * lp[n, t])
        rows.append(row)
    return slow_aggregate(rows, agg)


def slow_grpo(lp, old, A, mask, clip_eps, ref, beta, agg):
    rows = []
    for n in range(lp.shape[0]):
        row = []
        for t in range(lp.shape[1]):
            if mask[n, t]:
                ratio = torch.exp(torch.clamp(lp[n, t] - old[n, t].item(), -20, 20))
                a = A[n].item()
                l = -min(ratio * a, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * a)
                if beta > 0:
                    d = torch.clamp(ref[n, t].item() - lp[n, t], -20, 20)
                    l = l + beta * (torch.exp(d) - d - 1)
                row.append(l)
        rows.append(row)
    return slow_aggregate(rows, agg)


@FAST
@given(seeds, st.integers(1, 4), st.integers(1, 6), st.floats(0.0, 1.0), st.sampled_from(AGGS))
def test_gft_loss_equals_slow_loop(seed, N, T, tau, agg):
    _, _, mask, g = random_batch(seed, N, T, 2, p_mask=0.6)
    lp = (-torch.rand(N, T, generator=g, dtype=torch.float64) * 4).requires_grad_()
    A = torch.randn(N, generator=g, dtype=torch.float64)
    fast, slow = gft_loss(lp, A, mask, tau, agg), slow_gft(lp, A, mask, tau, agg)
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(grad_of(fast, lp), grad_of(slow, lp))


@FAST
@given(seeds, st.integers(1, 4), st.integers(1, 6))
def test_sft_and_dft_losses_equal_slow_loops_including_near_sure_tokens(seed, N, T):
    """SFT is -log p_t and DFT -sg(p_t) log p_t, each a mean over the masked tokens, for every p_t
    in (0, 1): DFT weighs a near-sure token (p_t = 1 - 1e-7) by p_t too, not by 1 (its tau is 1, so
    every p_t < 1 is rectified). Gradients in log p_t: SFT -1 / n, DFT -p_t / n, n masked tokens."""
    _, _, mask, g = random_batch(seed, N, T, 2)
    # -log p log-uniform over [1e-7, 10]: half the tokens have p > 0.999, where DFT's weight is ~1 but not 1
    lp = (-(10 ** (torch.rand(N, T, generator=g, dtype=torch.float64) * 8 - 7))).requires_grad_()
    toks = [(i, t) for i in range(N) for t in range(T) if mask[i, t]]
    sft_slow = sum(-lp[i, t] for i, t in toks) / len(toks)
    dft_slow = sum(-math.exp(lp[i, t].item()) * lp[i, t] for i, t in toks) / len(toks)
    sft, dft = sft_loss(lp, mask), dft_loss(lp, mask)
    torch.testing.assert_close(sft, sft_slow)
    torch.testing.assert_close(dft, dft_slow)
    torch.testing.assert_close(grad_of(sft, lp), torch.where(mask, -1.0 / len(toks), 0.0).double())
    torch.testing.assert_close(grad_of(dft, lp), torch.where(mask, -lp.detach().exp() / len(toks), 0.0))


@FAST
@given(seeds, st.integers(1, 4), st.integers(1, 6), st.floats(0.05, 0.5), st.sampled_from([0.0, 0.1]),
       st.sampled_from(AGGS))
def test_grpo_loss_equals_slow_loop(seed, N, T, clip_eps, beta, agg):
    _, _, mask, g = random_batch(seed, N, T, 2, p_mask=0.6)
    lp = (-torch.rand(N, T, generator=g, dtype=torch.float64) * 4).requires_grad_()
    old = (lp.detach() + torch.randn(N, T, generator=g, dtype=torch.float64) * 0.5).clamp(max=0)
    ref = -torch.rand(N, T, generator=g, dtype=torch.float64) * 4
    A = torch.randn(N, generator=g, dtype=torch.float64)
    fast = grpo_loss(lp, old, A, mask, clip_eps, ref_logprobs=ref, beta=beta, agg=agg)
    slow = slow_grpo(lp, old, A, mask, clip_eps, ref, beta, agg)
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(grad_of(fast, lp), grad_of(slow, lp))


@FAST
@given(seeds, st.integers(1, 4), st.integers(1, 6), st.floats(0.01, 0.99), st.sampled_from(AGGS))
def test_grpo_clip_never_binds_on_policy(seed, N, T, clip_eps, agg):
    """train.py's grpo takes one update per batch, old = current: the ratio is 1, inside any clip
    range, so the loss is the same whatever clip_eps is, and its gradient is the plain policy
    gradient's, -A grad log pi (why train.py has no --clip_eps)."""
    _, _, mask, g = random_batch(seed, N, T, 2, p_mask=0.6)
    lp = (-torch.rand(N, T, generator=g, dtype=torch.float64) * 4).requires_grad_()
    A = torch.randn(N, generator=g, dtype=torch.float64)
    loss = grpo_loss(lp, lp.detach(), A, mask, clip_eps, agg=agg)
    widest = grpo_loss(lp, lp.detach(), A, mask, 0.999, agg=agg)
    pg = gft_loss(lp, A, mask, tau=0.0, agg=agg)  # tau 0: C = 1, loss -A log pi: the plain policy gradient
    torch.testing.assert_close(loss, widest)
    torch.testing.assert_close(grad_of(loss, lp), grad_of(pg, lp))


@FAST
@given(seeds, st.sampled_from([0.0, 0.1]), st.sampled_from(AGGS))
def test_grpo_loss_clamps_log_ratios_at_20_as_the_slow_loop(seed, beta, agg):
    g = torch.Generator().manual_seed(seed)
    # log-ratios inside +-5, between 5 and 20, and beyond 20, in every row
    offsets = torch.tensor([-40.0, -25.0, -12.0, -6.0, -1.0, 1.0, 6.0, 12.0, 25.0, 40.0], dtype=torch.float64)
    N, T = 4, len(offsets)
    lp = (-50 - torch.rand(N, T, generator=g, dtype=torch.float64) * 5).requires_grad_()  # (N, T)
    shuffled = lambda: torch.stack([offsets[torch.randperm(T, generator=g)] for _ in range(N)])
    old = lp.detach() - shuffled()  # log(pi / pi_old) = the offset; old in [-95, -10]
    ref = lp.detach() + shuffled()  # log(pi_ref / pi) = the offset
    A = torch.tensor([1.0, -1.0, 0.5, -2.0], dtype=torch.float64) * (0.5 + torch.rand(N, generator=g))
    mask = torch.ones(N, T, dtype=torch.bool)
    fast = grpo_loss(lp, old, A, mask, 0.2, ref_logprobs=ref, beta=beta, agg=agg)
    slow = slow_grpo(lp, old, A, mask, 0.2, ref, beta, agg)
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(grad_of(fast, lp), grad_of(slow, lp))


@FAST
@given(seeds, st.integers(1, 4), st.integers(1, 6), st.sampled_from(AGGS),
       st.sampled_from([math.nan, math.inf, -math.inf, 5.0]))
def test_empty_rows_and_padding_contribute_nothing(seed, N, T, agg, garbage):
    """Padding may hold anything, NaN, +-inf or a positive 'log-prob' alike: only the masked
    positions are checked and counted, and the gradient outside the mask is 0."""
    _, _, mask, g = random_batch(seed, N, T, 2)
    lp = (-torch.rand(N, T, generator=g, dtype=torch.float64) * 4)
    clean = lp.clone()
    lp[~mask] = garbage  # padding garbage
    assert dcr_stats(lp, mask, 0.5) == dcr_stats(clean, mask, 0.5)
    lp.requires_grad_()
    A = torch.randn(N, generator=g, dtype=torch.float64)
    # append an all-masked row of -inf: same loss, zero and finite gradients outside the mask
    lp2 = torch.cat([lp.detach(), torch.full((1, T), float("-inf"), dtype=torch.float64)]).requires_grad_()
    mask2 = torch.cat([mask, torch.zeros(1, T, dtype=torch.bool)])
    A2 = torch.cat([A, torch.tensor([5.0], dtype=torch.float64)])
    for fn in (lambda x, m, a: gft_loss(x, a, m, 0.5, agg),
               lambda x, m, a: grpo_loss(x, x.detach(), a, m, agg=agg)):
        l1, l2 = fn(lp, mask, A), fn(lp2, mask2, A2)
        torch.testing.assert_close(l1, l2)
        g1, g2 = grad_of(l1, lp), grad_of(l2, lp2)
        torch.testing.assert_close(g2[:N], g1)
        assert torch.isfinite(g2).all() and (g2[~mask2] == 0).all()


def test_mask_accepts_bool_and_01_numbers():
    lp = -torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    m = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 1]])
    A = torch.tensor([1.0, -0.5, 2.0])
    ref = gft_loss(lp, A, m.bool(), 0.3)
    for mm in (m, m.float(), m.to(torch.uint8), m.double()):
        assert torch.equal(gft_loss(lp, A, mm, 0.3), ref)


# -----------------------------------------------------------------------------
# 8: group construction

@FAST
@given(group_lists(), st.booleans())
def test_flatten_groups_round_trips_sources_rewards_and_masks(groups, scale):
    """Rows group by group in the order given; tokens as long as the longest prompt + response (a
    batch that fits the block is never refused for a padding column); advantages those of each group
    alone, with scale passed on (False: r - mean, Dr. GRPO)."""
    batch = flatten_groups(groups, pad_id=99, scale=scale)
    flat = [(i, g, r) for i, g in enumerate(groups) for r in g.responses]  # the expected row order
    N, L = len(flat), max(len(g.prompt) + len(r.tokens) for _, g, r in flat)
    assert tuple(batch.tokens.shape) == tuple(batch.resp_mask.shape) == (N, L)
    assert batch.tokens.dtype == torch.long
    assert batch.sources == [r.source for _, _, r in flat]
    assert batch.group_index.tolist() == [i for i, _, _ in flat]
    assert batch.rewards.tolist() == [r.reward for _, _, r in flat]
    for n, (i, g, r) in enumerate(flat):
        lp, lr = len(g.prompt), len(r.tokens)
        assert batch.tokens[n, :lp].tolist() == g.prompt
        assert batch.tokens[n, lp:lp + lr].tolist() == r.tokens
        assert (batch.tokens[n, lp + lr:] == 99).all()
        assert batch.resp_mask[n].nonzero().flatten().tolist() == list(range(lp, lp + lr))
    for i, g in enumerate(groups):
        rows = batch.group_index == i
        expected = group_advantages(torch.tensor([[r.reward for r in g.responses]]), scale=scale)[0]
        torch.testing.assert_close(batch.advantages[rows], expected)
    zero_var = [len(g.responses) > 1 and len({r.reward for r in g.responses}) == 1 for g in groups]
    assert batch.zero_var.tolist() == zero_var
    assert batch.frac_zero_var == pytest.approx(sum(zero_var) / len(groups))
    adv = [a for g in groups for a in slow_advantages([[r.reward for r in g.responses]], scale)[0]]
    stats = source_stats(batch)
    for s in SOURCES:
        rs = [r.reward for _, _, r in flat if r.source == s]
        As = [a for a, (_, _, r) in zip(adv, flat) if r.source == s]
        assert (f"reward/{s}" in stats) == bool(rs) == (f"adv/{s}" in stats)
        if rs:
            assert stats[f"reward/{s}"] == pytest.approx(sum(rs) / len(rs))
            assert stats[f"adv/{s}"] == pytest.approx(sum(As) / len(As), abs=1e-6)
    assert stats["frac_zero_var"] == batch.frac_zero_var


@FAST
@given(group_lists(rewards=st.sampled_from([0.0, 1.0, 0.3, 0.1 + 0.2, 1.0 + 1e-9])))
@example([Group([1], [Response([2], "rollout", 0.1 + 0.2), Response([2], "rollout", 0.3)]),
          Group([1], [Response([2], "rollout", 1.0), Response([2], "rollout", 1.0 + 1e-9)])])
def test_zero_var_marks_exactly_the_groups_whose_advantages_are_all_zero(groups):
    # 0.1 + 0.2 != 0.3 and 1.0 != 1.0 + 1e-9 as Python floats, but equal in float32, where
    # the advantages are computed: zero_var must read the rewards the same way
    batch = flatten_groups(groups, pad_id=0)
    expected = [len(g.responses) >= 2 and bool((batch.advantages[batch.group_index == i] == 0).all())
                for i, g in enumerate(groups)]
    assert batch.zero_var.tolist() == expected


def test_count_sources_returns_group_size():
    assert count_sources(1, 3, 4) == 8  # paper default
    assert count_sources(0, 0, 1) == 1


# -----------------------------------------------------------------------------
# numerical safety

@settings(max_examples=25, deadline=None, derandomize=True)
@given(seeds, st.integers(1, 4), st.integers(1, 6), st.sampled_from([torch.float32, torch.bfloat16]))
def test_losses_finite_for_logprobs_down_to_minus_1e4(seed, N, T, dtype):
    _, _, mask, g = random_batch(seed, N, T, 2)
    lp0 = -(10 ** (torch.rand(N, T, generator=g) * 8 - 4))  # log-uniform in [-1e4, -1e-4]
    lp0[0, 0], lp0[-1, -1] = -1e4, 0.0
    old = -torch.rand(N, T, generator=g) * 1e4
    A = torch.randn(N, generator=g).to(dtype)
    losses = [lambda x, tau=tau, agg=agg: gft_loss(x, A, mask, tau, agg)
              for tau in (0.0, 0.1, 0.7, 1.0) for agg in AGGS]
    losses += [lambda x: sft_loss(x, mask), lambda x: dft_loss(x, mask),
               lambda x: grpo_loss(x, old.to(dtype), A, mask, ref_logprobs=old.to(dtype), beta=0.1),
               lambda x: grpo_loss(x, x.detach(), A, mask, ref_logprobs=old.flip(0).to(dtype), beta=0.04)]
    for fn in losses:
        lp = lp0.to(dtype).requires_grad_()
        loss = fn(lp)
        assert torch.isfinite(loss)
        assert torch.isfinite(grad_of(loss, lp)).all()
    assert all(math.isfinite(v) for k, v in dcr_stats(lp0.to(dtype), mask, 0.5).items())


# -----------------------------------------------------------------------------
# errors name the problem

lp46, m46 = -torch.rand(4, 6), torch.ones(4, 6, dtype=torch.bool)
A4 = torch.zeros(4)


def _with(t, idx, v):
    t = t.clone()
    t[idx] = v
    return t


ERRORS = [
    (lambda: gft_loss(-torch.rand(4, 7), A4, m46, 0.5),
     r"gft_loss: logprobs shape \(4, 7\) != mask shape \(4, 6\)"),
    (lambda: gft_loss(lp46, torch.zeros(3), m46, 0.5), r"advantages shape \(3,\) != \(4,\)"),
    (lambda: gft_loss(lp46[0], A4, m46[0], 0.5), r"logprobs must be \(N, T\)"),
    (lambda: gft_loss(_with(lp46, (1, 2), float("nan")), A4, m46, 0.5), "logprobs contain NaN or inf"),
    (lambda: gft_loss(_with(lp46, (1, 2), -float("inf")), A4, m46, 0.5), "logprobs contain NaN or inf"),
    (lambda: gft_loss(lp46, _with(A4, 0, float("inf")), m46, 0.5), "advantages contain NaN or inf"),
    (lambda: gft_loss(_with(lp46, (0, 0), 0.5), A4, m46, 0.5), r"logprobs must be <= 0"),
    (lambda: gft_loss(lp46, A4, m46, 1.5), r"tau must be in \[0, 1\], got 1.5"),
    (lambda: gft_loss(lp46, A4, m46, -0.1), r"tau must be in \[0, 1\]"),
    (lambda: gft_loss(lp46, A4, m46, float("nan")), r"tau must be in \[0, 1\]"),
    (lambda: dcr_coefficient(lp46, 2.0), r"dcr_coefficient: tau must be in \[0, 1\]"),
    (lambda: gft_loss(lp46, A4, m46, 0.5, agg="mean"), r"agg must be one of .*token-mean"),
    (lambda: gft_loss(lp46, A4, torch.zeros(4, 6), 0.5), "mask selects no response tokens"),
    (lambda: gft_loss(lp46, A4, m46.float() * 2, 0.5), "mask must be bool or hold only 0/1"),
    (lambda: sft_loss(lp46, m46[:, :5]), r"(sft|gft)_loss: logprobs shape \(4, 6\) != mask shape \(4, 5\)"),
    (lambda: grpo_loss(lp46, lp46[:, :5], A4, m46), r"grpo_loss: old_logprobs shape \(4, 5\)"),
    (lambda: grpo_loss(lp46, lp46, A4, m46, clip_eps=0.0), "clip_eps must be in"),
    (lambda: grpo_loss(lp46, lp46, A4, m46, beta=0.1), "needs ref_logprobs"),
    (lambda: grpo_loss(lp46, lp46, A4, m46, ref_logprobs=lp46, beta=-1.0), "beta must be finite and >= 0"),
    (lambda: grpo_loss(lp46, lp46, A4, m46, ref_logprobs=lp46, beta=float("nan")), "beta must be finite and >= 0, got nan"),
    (lambda: grpo_loss(lp46, lp46, A4, m46, ref_logprobs=lp46, beta=float("inf")), "beta must be finite and >= 0, got inf"),
    (lambda: grpo_loss(lp46, lp46, A4, m46, ref_logprobs=_with(lp46, 0, float("nan")), beta=0.1),
     "ref_logprobs contain NaN"),
    (lambda: group_advantages(torch.zeros(4)), r"rewards must be \(P, K\)"),
    (lambda: group_advantages(_with(torch.zeros(2, 3), (1, 1), float("nan"))), "rewards contain NaN"),
    (lambda: group_advantages(torch.zeros(2, 3), mask=torch.tensor([[1, 1, 0], [0, 0, 0]])),
     "group 1 has no members"),
    (lambda: group_advantages(torch.zeros(2, 3), mask=torch.ones(2, 2)), r"mask shape \(2, 2\)"),
    (lambda: flatten_groups([], 0), "no groups"),
    (lambda: flatten_groups([Group([1], [Response([2], "expert")]), Group([1], [])], 0),
     "group 1 has no responses"),
    (lambda: flatten_groups([Group([], [Response([2], "expert")])], 0), "group 0 has an empty prompt"),
    (lambda: flatten_groups([Group([1], [Response([2], "oracle")])], 0), "source 'oracle'"),
    (lambda: flatten_groups([Group([1], [Response([2], "teacher", float("nan"))])], 0), "reward nan"),
    (lambda: flatten_groups([Group([1], [Response([2], "teacher", float("inf"))])], 0), "reward inf"),
    (lambda: flatten_groups([Group([1], [Response([], "rollout")])], 0), "response 0 has no tokens"),
    (lambda: count_sources(1, -3, 4), "n_teacher must be an integer >= 0"),
    (lambda: count_sources(True, 3, 4), "n_expert must be an integer >= 0, got True"),
    (lambda: count_sources(0, 0, 0), "must be > 0"),
    (lambda: sft_as_policy_gradient_loss(torch.zeros(3), torch.tensor([0.5, 0.2, 0.2])),
     "p_exp must be a distribution"),
    (lambda: sft_as_policy_gradient_loss(torch.zeros(3), torch.ones(2) / 2), "must be the same"),
    (lambda: sft_as_policy_gradient_loss(torch.zeros(2), torch.tensor([1.5, -0.5])), "p_exp must be a distribution"),
    (lambda: implicit_reward(torch.full((2, 2), -math.log(4)), torch.full((2, 2), 0.25)),
     r"seq_logprobs shape \(2, 2\) and p_exp shape \(2, 2\) must be the same \(S,\)"),
    (lambda: dcr_stats(lp46, torch.zeros(4, 6, dtype=torch.bool), 0.5), "dcr_stats: mask selects no"),
    (lambda: sft_as_policy_gradient_loss(torch.tensor([float("nan"), -1.0]), torch.tensor([1.0, 0.0])),
     "sft_as_policy_gradient_loss: seq_logprobs contain NaN or inf"),
    (lambda: sft_as_policy_gradient_loss(torch.tensor([-float("inf"), -1.0]), torch.tensor([0.0, 1.0])),
     "sft_as_policy_gradient_loss: seq_logprobs contain NaN or inf"),
    (lambda: implicit_reward(torch.tensor([0.5, -1.0]), torch.tensor([1.0, 0.0])),
     r"implicit_reward: seq_logprobs must be <= 0"),
    (lambda: implicit_reward(torch.zeros(2), torch.tensor([float("nan"), 1.0])),
     "implicit_reward: p_exp must be a distribution"),
    (lambda: sft_as_policy_gradient_loss(torch.tensor([-800.0, -1e-3]), torch.tensor([1.0, 0.0])),
     "implicit reward is inf: a demonstrated output has pi"),
    (lambda: group_advantages(torch.zeros(2, 3), eps=-1e-6), "group_advantages: eps must be finite and > 0"),
    (lambda: group_advantages(torch.zeros(2, 3), eps=float("nan")), "eps must be finite and > 0, got nan"),
    (lambda: flatten_groups([Group([1], [Response([2], "expert")])], 0, eps=0.0), "eps must be finite and > 0"),
]


@pytest.mark.parametrize("call,match", ERRORS, ids=[m for _, m in ERRORS])
def test_invalid_inputs_raise_value_error_naming_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()
