"""A small GPT (nanoGPT-shaped) with padding-aware attention and KV-cache sampling.

The surface matches nanoGPT so the two can be swapped: `GPTConfig`, `GPT(config)`,
`forward(idx, targets=None) -> (logits, loss)`; with rope=False (nanoGPT's learned positions) a
nanoGPT state_dict loads as it is and gives nanoGPT's logits. Three additions serve fine-tuning:

- `forward(..., pad_mask=)`: rows may be left-padded (batched generation over prompts of
  different lengths). Positions are counted from each row's first real token, so a
  left-padded row sees exactly the positions it would see unpadded.
- `generate(...)`: batched sampling with a KV cache, greedy at temperature 0, per-row stop
  at an end token, reproducible through a `torch.Generator`.
- `token_logprobs(...)`: per-token log pi and entropy of response tokens from one forward
  pass and one log-softmax; every loss and metric in gft.py / train.py uses it.

Shapes: B batch, T time, C = n_embd, nh heads, hs = C // nh head size, V vocabulary.
"""
import functools
import importlib.util
import math
import numbers
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when present, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} asked for but torch.cuda.is_available() is False")
    try:
        return torch.device(name)
    except RuntimeError:  # torch's own message lists twenty device types
        raise ValueError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's has no bias=False before 2.1; kept for nanoGPT parity)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class KVCache:
    """Preallocated keys and values: per layer one (B, nh, max_len, hs) tensor of each. (One tensor
    per layer, not one for all: torch.compile writes a decode step's key into a layer's own tensor
    in place, but copies the whole cache when the step writes into a slice of a shared one.)

    `length` is the number of filled time slots, shared by all rows: rows that are shorter
    are left-padded, so slot t is position t - (number of pads) for that row.
    """

    def __init__(self, n_layer, B, nh, max_len, hs, device, dtype):
        self.k = [torch.zeros(B, nh, max_len, hs, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros_like(k) for k in self.k]
        self.dtype = dtype
        self.length = 0

    def append(self, layer, k, v):
        """Write k, v (B, nh, T, hs) after the filled slots; return all keys and values so far."""
        t0, t1 = self.length, self.length + k.size(2)
        self.k[layer][:, :, t0:t1] = k
        self.v[layer][:, :, t0:t1] = v
        return self.k[layer][:, :, :t1], self.v[layer][:, :, :t1]


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x, attn_mask=None, cache=None, layer=0, rot=None):
        # x (B, T, C); attn_mask None (plain causal) or additive (B, 1, T, S): 0 = may attend, -inf = may not
        B, T, C = x.size()
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)  # (B, T, 3, nh, hs)
        q, k, v = qkv.unbind(2)  # (B, T, nh, hs) views; backward stacks their gradients in one kernel
        if rot is not None:
            q, k = rotate(q, k, rot)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, nh, S, hs), S = cached + T
        dropout = self.dropout if self.training else 0.0
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


def rope_tables(block_size, hs, base=10000.0):
    """Rotary embeddings (Su et al. 2021): pair j of the head dimension at position p turns by
    the angle p * base^(-2j/hs). Returns cos and sin of every angle, (block_size, hs/2) each, float32."""
    inv = base ** (-torch.arange(0, hs, 2, dtype=torch.float32) / hs)  # (hs/2,)
    ang = torch.arange(block_size, dtype=torch.float32).unsqueeze(-1) * inv  # (block_size, hs/2)
    return ang.cos(), ang.sin()


FUSE_ROTARY = True  # on CUDA in half precision: q and k turned by `rotate_real` compiled into one kernel
# each way (Triton, compiled at first use); eager, the turn is three passes over q and k forward and more
# backward, ~11% of a GPT-2-small training step on an H200 (docs/performance.md). False: always eager.


def rotate(q, k, rot):
    """Rotate pairs (x1, x2) of the head dimension of q and k (B, T, nh, hs) by their position's
    angle: (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos). rot comes from GPT._rot, in one of two forms:

    - float32 q, k: rot = cos + i sin, complex (B or 1, T, 1, hs/2), and one complex product each,
      (x1 + i x2)(cos + i sin). On CPU this is 4-9x faster than any real formula we tried (which
      are bitwise equal to it, values and gradients; tests/test_model.py) and keeps rotary at ~5%
      of a CPU training step.
    - bfloat16 / float16 (autocast on GPU): rot = (cos, sin) stacked, (2, B or 1, T, 1, hs), and
      `rotate_real`. There is no bf16 complex type: the complex product needed a float32 copy of
      q and k, ~13% of a GPT-2-small step on an H100 (issue 13).
    """
    if rot.is_complex():
        return tuple(torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * rot).flatten(-2)
                     for x in (q, k))
    global FUSE_ROTARY
    if FUSE_ROTARY and q.is_cuda and not torch.compiler.is_compiling() and has_triton():
        try:
            return fused_rotate_real()(q, k, rot)
        except Exception as e:  # a platform torch.compile cannot serve: the eager formula is the reference
            warnings.warn(f"fused rotary failed ({type(e).__name__}: {e}); rotary runs eager from now on "
                          f"(set model.FUSE_ROTARY = False to skip the attempt)")
            FUSE_ROTARY = False
    return rotate_real(q, k, rot)


def rotate_real(q, k, rot):
    """rotate's half-precision form: rot (2, B or 1, T, 1, hs) holds cos interleaved as (c0, c0, c1,
    c1, ...) and sin as (-s0, s0, -s1, s1, ...), so x cos + (x2, x1) sin turns every pair, in x's dtype."""
    cos, sin = rot

    def turn(x):
        swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x2, x1) in every pair
        return torch.addcmul(x * cos, swapped, sin)  # one kernel for "+ swapped * sin"
    return turn(q), turn(k)


@functools.cache
def has_triton():
    """torch.compile's GPU code generator; absent on some platforms, where rotary stays eager."""
    return importlib.util.find_spec("triton") is not None


@functools.cache
def fused_rotate_real():
    """rotate_real compiled: one kernel reads q, k and the tables and writes both turned (and one for
    the backward), in place of eager's passes. Made at first use, with dynamic shapes: new batch sizes
    and lengths mostly reuse it (a decode step's length of 1 compiles once more)."""
    return torch.compile(rotate_real, dynamic=True)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, cache=None, layer=0, rot=None):
        x = x + self.attn(self.ln_1(x), attn_mask, cache, layer, rot)
        return x + self.mlp(self.ln_2(x))


@dataclass
class GPTConfig:
    block_size: int = 128  # longest prompt + response; the built-in task needs < 80
    vocab_size: int = 258  # data.py's byte encoding: 256 bytes + end-of-text + pad
    n_layer: int = 4  # 4 x 4 x 128 trains at ~15k tokens/s on 2 CPU cores (docs/performance.md)
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0  # tiny models on generated data do not overfit in minutes
    bias: bool = False  # nanoGPT: slightly better and faster without
    rope: bool = True  # rotary positions; learned ones (False, nanoGPT's) learned the task 2x slower:
    # pretraining loss 0.22 vs 0.48 after 750 steps at lr 1e-3 (same seed and data)

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")


class Generation(NamedTuple):
    tokens: torch.Tensor  # (B, max_new_tokens) new tokens; pad_id after a row stopped
    lengths: torch.Tensor  # (B,) new tokens per row, the end token included when it stopped
    stopped: torch.Tensor  # (B,) bool: True where the row emitted the end token


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd) if not config.rope else nn.Identity(),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.rope:  # computed, not learned: non-persistent, so checkpoints hold only weights
            cos, sin = rope_tables(config.block_size, config.n_embd // config.n_head)
            self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hs/2)
            self.register_buffer("rope_sin", sin, persistent=False)
            # the same for half-precision q and k, interleaved once here rather than at every forward
            # (a GPU decode step pays for each kernel): (2, block_size, hs), c0 c0 c1 c1 ... and -s0 s0 -s1 s1 ...
            self.register_buffer("rope_cs", torch.stack((torch.stack((cos, cos), -1).flatten(-2),
                                                         torch.stack((-sin, sin), -1).flatten(-2))), persistent=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scaled init of residual projections
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        """Parameter count; by default without the position and (tied) token embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel() + sum(p.numel() for p in self.transformer.wpe.parameters())
        return n

    def forward(self, idx, targets=None, pad_mask=None):
        """idx (B, T) tokens -> logits (B, T, V), loss (mean cross-entropy, targets -1 ignored).

        pad_mask (B, T) bool, True at real tokens, only for left-padded rows: it shifts
        positions so each row starts at 0 and stops real tokens from attending to pads.
        Right padding needs no mask: causal attention never looks ahead.
        """
        logits = self._logits(idx, pad_mask)
        loss = None
        if targets is not None:  # nanoGPT's loss, in the logits' dtype (bf16 under autocast, as nanoGPT's);
            # train.py's losses go through token_logprobs instead, in float32 (RL weighs single tokens)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def _logits(self, idx, pad_mask=None, cache=None, pos=None, attn_mask=None):
        B, T = idx.size()
        if pad_mask is not None:  # left padding: positions from each row's first real token
            self._check_pad_mask(idx, pad_mask)
            pos = (pad_mask.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
            attn_mask = self._attn_mask(pad_mask, T)
            self._check_position(int(pos.max()))
        elif pos is None:
            pos = torch.arange(T, device=idx.device).unsqueeze(0)  # (1, T)
            self._check_position(T - 1)  # known on the host: no device sync
        # else: a decode step of generate, which checked the whole length before its loop
        dtype = self._act_dtype(idx.device)  # of q, k and v
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # additive, made once here: given a
            # bool mask, scaled_dot_product_attention makes this in every layer (a GPU kernel or more each)
            attn_mask = torch.zeros(attn_mask.shape, dtype=dtype, device=idx.device).masked_fill_(
                ~attn_mask, float("-inf"))
        rot = None
        if self.config.rope:
            x = self.transformer.drop(self.transformer.wte(idx))
            rot = self._rot(pos, dtype)
        else:
            x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, attn_mask, cache, i, rot)
        return self.lm_head(self.transformer.ln_f(x))

    def _act_dtype(self, dev):
        """The dtype of the attention's q, k and v: autocast's when it is on, else the weights'."""
        return torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else self.lm_head.weight.dtype

    def _rot(self, pos, dtype):
        """pos (B or 1, T) -> rotate's tables at those positions, in the form for q and k's dtype;
        once per forward."""
        if dtype in (torch.float32, torch.float64):
            cos, sin = (t[pos][:, :, None] for t in (self.rope_cos, self.rope_sin))  # (B or 1, T, 1, hs/2)
            return torch.complex(cos, sin)
        return self.rope_cs[:, pos][:, :, :, None].to(dtype)  # (2, B or 1, T, 1, hs)

    @staticmethod
    def _check_pad_mask(idx, pad_mask):
        """A 0/1 integer mask (Hugging Face's attention_mask) would reach scaled_dot_product_attention
        as an additive mask and fail there, in words about attn_mask: say what pad_mask must be."""
        if pad_mask.dtype != torch.bool or pad_mask.shape != idx.shape:
            raise ValueError(f"pad_mask must be a bool tensor shaped like idx {tuple(idx.shape)}, True at real "
                             f"tokens; got {pad_mask.dtype} {tuple(pad_mask.shape)}")

    def _check_position(self, last):
        if last >= self.config.block_size:
            raise ValueError(f"sequence reaches position {last} but block_size is {self.config.block_size}")

    @staticmethod
    def _attn_mask(key_real, T):
        """key_real (B, S) bool -> (B, 1, T, S): the last T queries attend causally to real keys.

        A pad query may also attend to itself, so no row of the mask is empty (an empty row
        makes softmax NaN); pad outputs are never used.
        """
        S = key_real.size(1)
        q_pos = torch.arange(S - T, S, device=key_real.device).unsqueeze(1)  # (T, 1)
        k_pos = torch.arange(S, device=key_real.device).unsqueeze(0)  # (1, S)
        causal = k_pos <= q_pos  # (T, S)
        mask = causal.unsqueeze(0) & key_real.unsqueeze(1)  # (B, T, S)
        mask = mask | (k_pos == q_pos).unsqueeze(0)
        return mask.unsqueeze(1)

    def token_logprobs(self, tokens, resp_mask, with_entropy=True):
        """Per-token log-probabilities (and entropies) of the response tokens in one pass.

        tokens (N, L): prompt + response, right-padded; resp_mask (N, L) bool: True at
        response tokens. Returns logprobs (N, L-1) = log pi(tokens[:, 1:] | prefix) and
        entropy (N, L-1) of the policy at those positions (no gradient), both zero where
        resp_mask[:, 1:] is False. Use resp_mask[:, 1:] as the loss mask.
        One log-softmax gives both: p = exp(log p) of the chosen token, never a second softmax.
        """
        logits = self._logits(tokens[:, :-1])  # (N, L-1, V), bf16 under autocast
        logp = F.log_softmax(logits, dim=-1, dtype=torch.float32)  # (N, L-1, V), float32 (no float32 copy of logits)
        lp = logp.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)  # (N, L-1)
        mask = resp_mask[:, 1:]
        lp = torch.where(mask, lp, torch.zeros_like(lp))
        ent = None
        if with_entropy:
            with torch.no_grad():
                ent = -(logp.exp() * logp).sum(-1)  # (N, L-1)
                ent = torch.where(mask, ent, torch.zeros_like(ent))
        return lp, ent

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, pad_mask=None,
                 eos_id=None, pad_id=0, generator=None, use_cache=True, fast=False, compile_step=False):
        """Sample continuations for a batch of (left-padded) prompts.

        idx (B, T) prompts, left-padded; pad_mask (B, T) bool, True at real tokens (None: no
        padding; a row that ends in padding is a ValueError). temperature 0 = greedy. A row stops
        after it emits eos_id; later slots are pad_id. use_cache=False recomputes the whole prefix
        every step (tests, benchmarks).
        fast=True decodes with `fast_generate` (end of this file; CUDA graphs on GPU; train.py's
        rollouts use it by default on CUDA): the same tokens for the same generator.
        compile_step=True (with fast=True) compiles its one-token step first (torch.compile).
        Returns Generation(tokens (B, max_new_tokens), lengths (B,), stopped (B,)). Raises a
        ValueError naming the rows if a row had nothing finite to sample from at some token: a NaN or
        +inf score, or every score -inf (scores: the logits over the temperature; checked at the end).
        """
        if not 0 <= temperature < math.inf:  # NaN too; inf would make every score 0 (uniform) or NaN
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        if top_k is not None and not (isinstance(top_k, numbers.Integral) and top_k >= 1):
            raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
        if not (isinstance(max_new_tokens, numbers.Integral) and max_new_tokens >= 0):
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        V = self.config.vocab_size  # eos_id is compared with sampled tokens; pad_id is fed back for stopped rows
        if eos_id is not None and not (isinstance(eos_id, numbers.Integral) and 0 <= eos_id < V):
            raise ValueError(f"eos_id must be a token id in [0, {V}) or None, got {eos_id!r} (no row could stop)")
        if eos_id is not None and not (isinstance(pad_id, numbers.Integral) and 0 <= pad_id < V):
            raise ValueError(f"pad_id must be a token id in [0, {V}) (rows that stopped at eos_id feed it to the "
                             f"model), got {pad_id!r}")
        if fast and not use_cache:
            raise ValueError("fast=True decodes with the KV cache; it cannot be combined with use_cache=False")
        if compile_step and not fast:
            raise ValueError("compile_step=True compiles fast decoding's step: it needs fast=True")
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError(f"idx must be (B, T) prompt tokens with T >= 1, got shape {tuple(idx.shape)}")
        B, T = idx.shape
        dev = idx.device
        if pad_mask is None:
            pad_mask = torch.ones(B, T, dtype=torch.bool, device=dev)
        self._check_pad_mask(idx, pad_mask)
        if not bool(pad_mask[:, -1].all()):  # each row continues from its last token: it must be a real one
            rows = (~pad_mask[:, -1]).nonzero().flatten().tolist()
            raise ValueError(f"pad_mask: rows {rows[:8]}{' ...' if len(rows) > 8 else ''} end in padding; generate "
                             f"needs left-padded prompts with at least one real token (pad_mask[:, -1] all True)")
        longest = int(pad_mask.sum(1).max()) + max_new_tokens
        if longest > self.config.block_size:
            raise ValueError(f"prompt ({int(pad_mask.sum(1).max())} tokens) + max_new_tokens ({max_new_tokens}) "
                             f"= {longest} exceeds block_size {self.config.block_size}")
        if fast:
            return fast_generate(self, idx, max_new_tokens, temperature, top_k, pad_mask, eos_id, pad_id, generator,
                                 compile_step)
        out, done, lengths, finite = self._new_outputs(B, max_new_tokens, pad_id, dev)
        real = torch.ones(B, T + max_new_tokens, dtype=torch.bool, device=dev)  # (B, T + new): True at real tokens
        real[:, :T] = pad_mask
        cache = seq = None
        if use_cache:
            cache = self._new_cache(B, T + max_new_tokens, dev)
            logits = self._logits(idx, pad_mask, cache=cache)[:, -1]  # prefill (B, V)
            cache.length = T
            pos = pad_mask.sum(1, keepdim=True)  # (B, 1) position of the first new token
        else:
            seq = torch.full((B, T + max_new_tokens), pad_id, dtype=torch.long, device=dev)  # prompt + new, filled as made
            seq[:, :T] = idx
        for t in range(max_new_tokens):
            if not use_cache:
                logits = self._logits(seq[:, :T + t], real[:, :T + t])[:, -1]
            nxt = self._emit(logits, t, out, done, lengths, finite, temperature, top_k, generator, eos_id, pad_id)
            if eos_id is not None and bool(done.all()):
                break
            if t == max_new_tokens - 1:
                break
            if use_cache:  # one new query, which may attend to every real key: the mask is a view
                logits = self._logits(nxt[:, None], cache=cache, pos=pos + t,
                                      attn_mask=real[:, None, None, :T + t + 1])[:, -1]
                cache.length += 1
            else:
                seq[:, T + t] = nxt
        return self._finish(out, lengths, done, finite)

    @staticmethod
    def _new_outputs(B, max_new_tokens, pad_id, dev):
        """generate's running state: out (B, max_new_tokens) tokens, pad_id until written; done (B,)
        rows that emitted eos_id; lengths (B,) new tokens per row; finite (B,) rows that have had a
        valid distribution at every token so far (_sample). _emit updates them in place."""
        out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        lengths = torch.full((B,), max_new_tokens, dtype=torch.long, device=dev)
        finite = torch.ones(B, dtype=torch.bool, device=dev)
        return out, done, lengths, finite

    def _emit(self, logits, t, out, done, lengths, finite, temperature, top_k, generator, eos_id, pad_id):
        """Sample new token t from logits (B, V) into out[:, t] (pad_id for rows already stopped);
        a row that emits eos_id stops with length t + 1. Returns nxt (B,); updates done, lengths and
        finite in place, on the device: no host sync here (fast decoding reads done every 16 tokens,
        finite at the end)."""
        nxt, valid = self._sample(logits.float(), temperature, top_k, generator)
        finite &= valid  # read once, at the end (_finish)
        nxt.masked_fill_(done, pad_id)
        out[:, t] = nxt
        if eos_id is not None:
            hit = (nxt == eos_id) & ~done
            lengths.masked_fill_(hit, t + 1)
            done |= hit
        return nxt

    @staticmethod
    def _finish(out, lengths, done, finite):
        """generate's result, once every row had a valid distribution at every token (one host read)."""
        if not bool(finite.all()):
            rows = (~finite).nonzero().flatten().tolist()
            raise ValueError(f"generate: rows {rows[:8]}{' ...' if len(rows) > 8 else ''} had no valid distribution "
                             f"to sample from: NaN or inf logits (weights or activations that overflowed), "
                             f"or a temperature so small that logits / temperature overflows")
        return Generation(out, lengths, done)

    def _new_cache(self, B, max_len, dev):
        """An empty KVCache for B rows of up to max_len tokens, in the dtype k and v will have."""
        c = self.config
        return KVCache(c.n_layer, B, c.n_head, max_len, c.n_embd // c.n_head, dev, self._act_dtype(dev))

    @staticmethod
    def _sample(logits, temperature, top_k, generator):
        """logits (B, V) -> next tokens (B,), and valid (B,): the row's scores had a finite maximum
        (no NaN, no +inf, not all -inf: what softmax needs; -inf entries, as top_k makes, are fine)."""
        if temperature > 0 and temperature != 1.0:  # x / 1.0 is x: one pass over (B, V) saved
            logits = logits / temperature
        valid = logits.amax(-1).abs() < math.inf  # NaN and inf propagate into the max
        if temperature == 0:
            return logits.argmax(-1), valid
        if top_k is not None and top_k < logits.size(-1):
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        # The draw of torch.multinomial(probs, 1), written out: the exponential race, argmax_i p_i / q_i
        # with q_i ~ Exp(1), picks i with probability p_i. The tokens and the generator's state are
        # multinomial's, bit for bit (tests/test_model.py::test_sampler_draws_what_torch_multinomial_draws);
        # what it leaves out is multinomial's check of probs, ten kernels a token on a GPU (`valid`
        # above does that job in one pass).
        race = torch.empty_like(probs).exponential_(1.0, generator=generator)
        return (probs / race).argmax(-1), valid


# ----------------------------------------------------------------------------- fast decode
# (opt-in here; train.py's rollouts use it by default on CUDA)
# GPT.generate above is the path to read. On a GPU its one-token steps are bound by per-step
# overhead (Python, kernel launches, host syncs), not by the GPU (issue 13). fast_generate
# removes that overhead and nothing else: every decode step has the same tensor shapes, so on
# CUDA it is captured once as a CUDA graph and replayed; the stop check reads the device every
# STOP_CHECK_EVERY tokens, not every token. Tokens are those of GPT.generate for the same
# generator (tests/test_model.py; greedy also on CUDA, tests/test_gpu.py).

STOP_CHECK_EVERY = 16  # tokens between host reads of "has every row stopped?"; rows that have
# stopped keep decoding pads until then (at most 15 wasted steps, against a device sync per token)


class SlotKVCache:
    """A filled KVCache seen by the fixed-shape decode step: one token's k, v written in place at
    time slot `slot`, a (1,) long tensor on the device (no host int that would change the step),
    and the whole cache returned, (B, nh, max_len, hs); slots not yet written are masked out."""

    def __init__(self, cache, slot):
        self.k, self.v, self.slot = cache.k, cache.v, slot

    def append(self, layer, k, v):
        """k, v (B, nh, 1, hs) -> all keys and values, (B, nh, max_len, hs) each."""
        self.k[layer].index_copy_(2, self.slot, k.to(self.k[layer].dtype))
        self.v[layer].index_copy_(2, self.slot, v.to(self.v[layer].dtype))
        return self.k[layer], self.v[layer]


@torch.no_grad()
def fast_generate(model, idx, max_new_tokens, temperature, top_k, pad_mask, eos_id, pad_id, generator,
                  compile_step=False):
    """GPT.generate(..., fast=True), settings already checked. The prefill is GPT.generate's; then
    each token is one fixed-shape step over the whole cache, inputs and outputs in static buffers:

      tok (B, 1)   the token just sampled            pos (B, 1)  its position (rotary)
      slot (1,)    its time slot in the cache        key_bias (B, max_len)  0 at real keys, -inf elsewhere
      logits (B, V)  the step's output (a graph's static output on CUDA)

    compile_step=True runs the step through torch.compile first (fusing its small kernels), then
    captures that. The first call compiles (seconds to a minute); later calls with other batch sizes
    and lengths reuse it (dynamic shapes), except a batch of one, which compiles once more. Under
    autocast the compiled step gets the Linear weights already in the autocast dtype, cast once per
    call here: traced autocast would cast them in every step (eager autocast caches the casts, and
    the eager graph replays with those copies).

    Sampling and the stop bookkeeping stay outside the step, as in GPT.generate, so the
    generator is drawn from in the same order (it may draw up to STOP_CHECK_EVERY - 1 more
    times after every row stopped: the tokens are the same, the generator's state after may not be).
    """
    B, T = idx.shape
    dev = idx.device
    S = T + max_new_tokens
    out, done, lengths, finite = model._new_outputs(B, max_new_tokens, pad_id, dev)
    cache = model._new_cache(B, S, dev)
    logits = model._logits(idx, pad_mask, cache=cache)[:, -1]  # prefill (B, V), fills slots [0, T)

    tok = torch.zeros(B, 1, dtype=torch.long, device=dev)
    pos = pad_mask.sum(1, keepdim=True)  # (B, 1) position of the first new token
    slot = torch.full((1,), T, dtype=torch.long, device=dev)
    key_bias = torch.full((B, S), float("-inf"), dtype=cache.dtype, device=dev)  # additive attention mask:
    key_bias[:, :T].masked_fill_(pad_mask, 0.0)  # later slots become real (0) as they fill
    mask = key_bias[:, None, None, :]  # (B, 1, 1, max_len), a view: the step sees every update
    slot_cache = SlotKVCache(cache, slot)

    decoder, weights = DecodeStep(model), {}
    if compile_step and cache.dtype != model.lm_head.weight.dtype:  # autocast
        weights = precast_linear_weights(model, cache.dtype)

    def step():  # idempotent for fixed inputs (it writes slot `slot` only), so graph warm-up is harmless
        key_bias.index_fill_(1, slot, 0.0)
        if weights:  # lm_head's copy replaces it alone (tie_weights=False): the embedding still reads float32 wte
            return torch.func.functional_call(decoder, weights, (tok, slot_cache, pos, mask), tie_weights=False)
        return decoder(tok, slot_cache, pos, mask)  # (B, V)

    fn = torch.compile(step, dynamic=True) if compile_step else step
    run_step = None if dev.type == "cuda" else fn  # CUDA: captured at the first step, when tok holds a real token

    for t in range(max_new_tokens):
        nxt = model._emit(logits, t, out, done, lengths, finite, temperature, top_k, generator, eos_id, pad_id)
        if eos_id is not None and (t + 1) % STOP_CHECK_EVERY == 0 and bool(done.all()):  # the only host sync
            break
        if t == max_new_tokens - 1:
            break
        tok.copy_(nxt[:, None])
        if run_step is None:
            run_step = cuda_graph(fn)
        logits = run_step()
        pos += 1
        slot += 1
    return model._finish(out, lengths, done, finite)


def precast_linear_weights(model, dtype):
    """{DecodeStep parameter name: copy in dtype} of every nn.Linear's weight and bias: what autocast
    casts at each use. Parameters (not plain tensors), so that torch.compile keeps their shapes static."""
    return {f"model.{m}.{k}": nn.Parameter(p.detach().to(dtype), requires_grad=False)
            for m, mod in model.named_modules() if isinstance(mod, nn.Linear) for k, p in mod.named_parameters()}


class DecodeStep(nn.Module):
    """fast_generate's one-token step as a module's forward, so torch.func.functional_call can run it
    with other weights (the Linear weights pre-cast for the compiled step)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tok, cache, pos, attn_mask):
        return self.model._logits(tok, cache=cache, pos=pos, attn_mask=attn_mask)[:, -1]  # (B, V)


def cuda_graph(fn):
    """fn() -> tensor, run on static buffers -> a function that replays fn captured as a CUDA graph
    and returns its (static) output. Warm-up on a side stream first, as torch.cuda.graph requires.
    Under autocast the weights' bf16 copies come from autocast's cache, made in the warm-up (or, for
    a compiled step, from fast_generate's pre-cast copies); the graph is used only inside the
    caller's autocast region and generate call, which keep them alive."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn()

    def replay():
        graph.replay()
        return static_out
    return replay
