"""Train and evaluate: pretrain / sft / dft / gft / grpo / eval / demo, from one CLI.

    python train.py                       # demo: base -> SFT and GFT -> table (minutes, CPU)
    python train.py pretrain --out out/base
    python train.py sft  --init out/base/ckpt.pt --out out/sft
    python train.py gft  --init out/base/ckpt.pt --out out/gft --tau 0.7
    python train.py grpo --init out/gft/ckpt.pt  --out out/gft_grpo
    python train.py eval --init out/gft/ckpt.pt
    python train.py --help                # every setting, its default and allowed range

Every step draws its data and samples from seeds derived from (--seed, step), so the step
number is the whole data position and RNG state: a resumed run replays exactly the steps an
uninterrupted run would have taken (bitwise on CPU). Checkpoints are written atomically.
Several processes: `torchrun --nproc_per_node N train.py MODE ...` (DDP, gloo on CPU, nccl on GPU);
each rank takes a slice of every step's prompts and the loss is normalised by the global count.
"""
import argparse
import contextlib
import dataclasses
import difflib
import hashlib
import json
import math
import os
import random
import statistics
import sys
import textwrap
import time
import zipfile
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

import data as D
import gft
from model import GPT, GPTConfig, pick_device

MODES = ("demo", "pretrain", "sft", "dft", "gft", "grpo", "eval")


# ----------------------------------------------------------------------------- settings

def opt(default, help, lo=None, hi=None, choices=None):
    """A setting: default, help line, allowed range (inclusive) or choices."""
    return field(default=default, metadata=dict(help=help, lo=lo, hi=hi, choices=choices))


@dataclass
class Config:
    # run
    mode: str = opt("demo", "what to do", choices=MODES)
    out: str = opt("", "output folder (checkpoint, metrics.jsonl); default out/<mode>")
    init: str = opt("", "checkpoint to start from (required by every mode but pretrain and demo)")
    resume: bool = opt(False, "continue the run in --out from its last checkpoint")
    override: bool = opt(False, "allow --resume with settings that differ from the checkpoint's")
    overwrite: bool = opt(False, "start afresh in an --out that already holds a run (ckpt.pt), replacing its "
                                 "checkpoint and log; without it (or --resume) such an --out is an error")
    seed: int = opt(1337, "drives data, sampling and init", lo=0)
    device: str = opt("auto", "auto (cuda if present, else cpu), cpu, cuda, cuda:N")
    compile: bool = opt(False, "torch.compile the training forward and, with fast decode, the decode step "
                               "(GPU; slow to start on CPU)")
    fast_decode: bool = opt(None,  # None (unset): decided by the device in sample_rollouts
                            "rollouts by GPT.generate(fast=True): fixed-shape KV-cache steps, a CUDA graph "
                            "on GPU, a stop check every 16 tokens; eager's tokens on CPU (tested); unset: on for "
                            "CUDA (4.5x and 6.2x the eager cache's tokens/s on an H200), off for CPU (no faster there)")
    # model: unset (None) = model.GPTConfig's default for pretrain, the --init checkpoint's otherwise;
    # a value given with --init must agree with the checkpoint's
    n_layer: int = opt(None, "transformer blocks", lo=1, hi=64)
    n_head: int = opt(None, "attention heads", lo=1, hi=64)
    n_embd: int = opt(None, "width", lo=8, hi=8192)
    block_size: int = opt(None, "longest prompt + response in tokens", lo=16, hi=8192)
    dropout: float = opt(None, "dropout", lo=0.0, hi=0.9)
    rope: bool = opt(None, "rotary position embeddings (False: learned absolute ones, as nanoGPT)")
    # data
    data: str = opt("", "JSONL file of real problems (prompt/answer/expert/teachers); default: built-in task")
    tokenizer: str = opt("bytes", "bytes (built in, offline) or a named tiktoken encoding")
    n_prompts: int = opt(2000, "fine-tuning prompt pool size (the paper's 10k groups, scaled down)", lo=1)
    teacher_error: float = opt(D.TEACHER_ERROR, "chance that a built-in teacher solution has a slip", lo=0.0, hi=1.0)
    expert_style: str = opt("", "the built-in expert's form: chain (as pretraining writes it: the control) or "
                            "tree (pairwise sums, never in pretraining: the off-policy regime); unset: chain, "
                            "and tree for the demo", choices=tuple(D.EXPERT_STYLES))
    digits: int = opt(2, "digits per operand of the built-in fine-tuning and held-out problems; pretraining "
                      "always has 2, so 3 is knowledge the base lacks (both probes stay pretraining's)", lo=1, hi=6)
    train_ops: int = opt(4, "operands of the built-in fine-tuning, val and held-out test sums; above 5 wants a "
                         "base pretrained on some sums that long (--base_mix)", lo=3, hi=7)
    ood_ops: int = opt(5, "operands of the built-in ood split's sums, more than --train_ops; 6 or more wants a "
                       "base pretrained on some 6-operand sums (--base_mix)", lo=4, hi=8)
    base_mix: str = opt("", "pretrain: operand counts and weights of the pretraining sums, as "
                        "'2:0.25,3:0.45,4:0.15,5:0.15' (weights are relative); unset: data.TaskConfig.base_mix")
    sft_teachers: int = opt(0, "sft/dft: correct teacher solutions per prompt beside its expert, SFT(mix); "
                            "a step keeps --batch_size sequences, from batch_size / (1 + this) prompts", lo=0)
    # optimisation
    steps: int = opt(0, "optimiser steps; 0 = the mode's default (MODE_DEFAULTS)", lo=0)
    batch_size: int = opt(32, "sequences per step for pretrain / sft / dft", lo=1)
    lr: float = opt(0.0, "peak learning rate; 0 = the mode's default (MODE_DEFAULTS)", lo=0.0, hi=1.0)
    warmup: int = opt(-1, "linear warm-up steps, then --schedule; -1 = mode default", lo=-1)
    min_lr_ratio: float = opt(0.1, "final lr / peak lr", lo=0.0, hi=1.0)
    schedule: str = opt("", "lr after warm-up: cosine (decay to lr * min_lr_ratio at --steps) or constant; "
                        "'' = the mode's default", choices=("", "cosine", "constant"))
    weight_decay: float = opt(0.0, "AdamW decay of matrices (fine-tuning default 0: stay near the base; "
                              "official GFT: 0.01)", lo=0.0, hi=1.0)
    adam_beta2: float = opt(0.95, "AdamW beta2 (0.95 as nanoGPT; official GFT: 0.999)", lo=0.0, hi=0.99999)
    grad_clip: float = opt(1.0, "clip the global grad norm to this (0 = off)", lo=0.0)
    skip_nonfinite: bool = opt(False, "skip (and count) a step whose loss or grad is NaN/inf instead of stopping")
    # groups (gft, grpo)
    prompts_per_step: int = opt(16, "prompts P per step; each gets a group of K responses", lo=1)
    n_expert: int = opt(1, "expert demonstrations per group (paper: 1)", lo=0)
    n_teacher: int = opt(3, "teacher solutions per group (paper: 3; 0 = 'GFT no mix')", lo=0)
    n_rollout: int = opt(-1, "rollouts per group; -1 = 4 for gft (paper), 8 for grpo", lo=-1)
    updates_per_batch: int = opt(1, "gft: optimiser updates per rollout batch, each on the next slice of its "
                                 "groups (official GFT: 4); a step is one batch", lo=1, hi=64)
    tau: float = opt(0.7, "DCR threshold; 0.7 is a reported sweep peak not checked against the paper, the official "
                          "scripts use 0.1 and 0.5: sweep it (0 = no DCR, 1 = DFT-like)", lo=0.0, hi=1.0)
    temperature: float = opt(1.0, "rollout sampling temperature (0 = greedy)", lo=0.0, hi=10.0)
    max_new_tokens: int = opt(64, "longest rollout; the longest 5-operand expert is 51 tokens + end of text", lo=1)
    adv_scale: bool = opt(True, "divide advantages by the group std (False: Dr. GRPO, mean only)")
    agg: str = opt("token-mean", "loss aggregation", choices=gft.AGGS)
    kl_beta: float = opt(0.0, "grpo: weight of the k3 KL to the --init model", lo=0.0, hi=100.0)
    # the pretraining gate: train until the base can sometimes solve held-out problems (README "The base model")
    gate_pass1: float = opt(0.2, "pretrain: stop at the first check where val pass@1 at T=1 reaches this "
                            "(0 = no gate: run all --steps)", lo=0.0, hi=1.0)
    gate_every: int = opt(250, "pretrain: steps between gate checks", lo=1)
    gate_n: int = opt(64, "pretrain: val problems per gate check (4 samples each)", lo=1)
    # logging and evaluation
    log_every: int = opt(10, "steps between progress lines", lo=1)
    eval_every: int = opt(0, "steps between held-out evaluations (0 = only at the end)", lo=0)
    ckpt_every: int = opt(50, "steps between checkpoints (one is always written at the end)", lo=1)
    eval_n: int = opt(200, "problems per evaluation split (greedy accuracy); at most the probe's 1701", lo=1, hi=1701)
    eval_split: str = opt("test", "held-out split to report as acc_test: test, or val for choosing settings",
                          choices=("test", "val"))
    passk_split: str = opt("test", "split whose problems pass@k, entropy and paths are measured on: test (the "
                           "held-out split), or ood (harder, where a base's pass@64 is further from 1)",
                           choices=("test", "ood"))
    passk_problems: int = opt(64, "held-out problems sampled for pass@k, entropy and paths", lo=1)
    passk_n: int = opt(16, "samples per problem for pass@k (k = 1, 2, 4, ... <= n)", lo=1)
    kl_n: int = opt(64, "problems per split (test, probe) whose solutions anchor KL(base || model)", lo=1)


MODE_DEFAULTS = {  # steps and lr per mode; --steps / --lr override
    "pretrain": dict(steps=6000, lr=1e-3, warmup=100, schedule="constant"),  # steps is the gate's cap: the
    # gate (--gate_pass1) stops pretraining when the base can sometimes solve val problems; 2e-3 and up stalled
    # fine-tuning lr: the best of 3e-5 / 1e-4 / 3e-4 per method on the val split (experiments/repro.py sweep,
    # 80 steps) on the base used before the gate, where GRPO at 3e-4 collapsed. On the gated bases the same
    # sweep chose 3e-4 / 3e-4 / 1e-4 / 3e-4 (docs/results.md), three at the grid's top: a wider grid decides
    "sft": dict(steps=150, lr=3e-5),
    "dft": dict(steps=150, lr=3e-4),
    "gft": dict(steps=150, lr=3e-5, n_rollout=4),  # the paper's K = 1 expert + 3 teachers + 4 rollouts
    "grpo": dict(steps=150, lr=3e-5, n_rollout=8),  # the same group size K = 8, all rollouts
    "eval": dict(steps=0, lr=0.0),
    "demo": dict(steps=0, lr=0.0, expert_style="tree"),  # the demo shows the paper's premise: an off-policy expert
}
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "rope")  # Config fields that are GPTConfig's
RUN_KEYS_IGNORED_ON_RESUME = {"resume", "override", "overwrite", "out", "device", "compile", "fast_decode", "log_every",
                              "eval_every", "ckpt_every", "eval_n", "eval_split", "passk_split", "passk_problems",
                              "passk_n", "kl_n"}  # out: a run folder may be moved or copied, then resumed
TRAINING = ("pretrain", "sft", "dft", "gft", "grpo")
FINE_TUNING = ("sft", "dft", "gft", "grpo")
READ_BY = {  # settings read by some modes only: in any other a value other than its default is an error (it would
    # do nothing, and the run would look as if it had). The demo reads DEMO_READS only. Settings not named here are
    # read by every mode, or (kl_n) wherever there is a base to compare with, which for eval depends on --init's
    # checkpoint: pretrain takes it unread, so that one set of evaluation flags serves every run.
    **dict.fromkeys(("steps", "lr", "warmup", "min_lr_ratio", "schedule", "weight_decay", "adam_beta2", "grad_clip",
                     "skip_nonfinite", "resume", "override", "overwrite", "compile", "log_every", "eval_every",
                     "ckpt_every"), TRAINING),  # compile: the trained forward (eval's forward is not compiled)
    "data": FINE_TUNING + ("eval",),  # pretraining writes its own sums
    "n_prompts": FINE_TUNING,  # the pool's size: pretrain and eval draw no pool
    "fast_decode": ("gft", "grpo"),  # rollouts; evaluation samples with the eager cache
    "expert_style": ("sft", "dft", "gft"),  # the pool's experts: grpo never reads them, eval's splits are fixed
    **dict.fromkeys(("prompts_per_step", "n_rollout", "temperature", "adv_scale", "agg"), ("gft", "grpo")),
    **dict.fromkeys(("tau", "n_expert", "n_teacher", "teacher_error", "updates_per_batch"), ("gft",)),  # sft(mix)
    "kl_beta": ("grpo",),  # takes correct teachers only: no teacher_error
    "batch_size": ("pretrain", "sft", "dft"),
    "sft_teachers": ("sft", "dft"),
    **dict.fromkeys(("base_mix", "gate_pass1", "gate_every", "gate_n"), ("pretrain",)),
}
DEMO_READS = ("mode", "out", "seed", "device", "expert_style", "eval_n", "passk_problems", "passk_n", "kl_n")


def mode_help(mode):
    """The epilog of `python train.py MODE --help`: the mode's filled defaults and the settings it
    does not read (an error if given), from MODE_DEFAULTS, READ_BY and DEMO_READS."""
    d = fill_defaults(Config(mode=mode))
    keys = (("steps", "lr", "warmup", "schedule") if mode in TRAINING else ()) + \
        (("n_rollout",) if mode in ("gft", "grpo") else ()) + (("expert_style",) if mode == "demo" else ())
    text = f"mode {mode}: " + (f"defaults {', '.join(f'--{k} {getattr(d, k)}' for k in keys)}, --out {d.out}. "
                               if keys else f"default --out {d.out}. ")
    if mode == "demo":
        text += (f"It fine-tunes {DEMO_STEPS} steps (DEMO_STEPS) each of SFT and GFT and reads only "
                 f"{', '.join('--' + k for k in DEMO_READS[1:])}; any other setting is an error.")
    else:
        unread = [k for k, modes in READ_BY.items() if mode not in modes]
        text += f"It does not read (an error if given): {', '.join('--' + k for k in unread)}."
    return textwrap.fill(text, 100)


def parse_args(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    mode = args[0] if args and args[0] in MODES else None  # for the help's epilog only: argparse reads the mode
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=mode_help(mode) if mode else "python train.py MODE --help adds the mode's "
                                "defaults and the settings it does not read",
                                allow_abbrev=False)  # --ta 0.5 is an unknown setting, not --tau
    p.add_argument("mode", nargs="?", default="demo", choices=MODES, help="what to do (default: demo)")
    for f in dataclasses.fields(Config):
        if f.name == "mode":
            continue
        m = f.metadata
        rng = f" [{m['lo']}, {m['hi'] if m['hi'] is not None else 'inf'}]" if m["lo"] is not None else ""
        rng = f" {{{', '.join(m['choices'])}}}" if m["choices"] else rng
        default = (f"model.GPTConfig's {getattr(GPTConfig, f.name)!r}, or --init's" if f.name in MODEL_KEYS
                   else repr(f.default))
        h = f"{m['help']}{rng} (default {default})"
        if f.type is bool:
            p.add_argument(f"--{f.name}", type=_bool, default=f.default, help=h, metavar="BOOL",
                           nargs="?", const=True)
        else:
            p.add_argument(f"--{f.name}", type=f.type, default=f.default, help=h)
    ns, unknown = p.parse_known_args(argv)
    if unknown:
        known = [f"--{f.name}" for f in dataclasses.fields(Config)]
        close = [m for u in unknown if u.startswith("--") for m in difflib.get_close_matches(u.split("=")[0], known, 1)]
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise SystemExit(f"error: unknown setting(s) {unknown}{hint} (see python train.py --help)")
    return make_config(**vars(ns))


def _bool(s):
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def fill_defaults(cfg):
    """Replace the 'mode default' sentinels (steps 0, lr 0, warmup -1, schedule '', n_rollout -1,
    expert_style '', out '') with the mode's values, and pretrain's unset model fields with GPTConfig's."""
    d = MODE_DEFAULTS.get(cfg.mode)
    if d is None:  # an unknown mode: check_config names it
        return cfg
    cfg.steps = cfg.steps or d["steps"]
    cfg.lr = cfg.lr or d["lr"]
    cfg.warmup = d.get("warmup", 20) if cfg.warmup == -1 else cfg.warmup
    cfg.schedule = cfg.schedule or d.get("schedule", "cosine")
    cfg.n_rollout = d.get("n_rollout", 4) if cfg.n_rollout == -1 else cfg.n_rollout
    cfg.expert_style = cfg.expert_style or d.get("expert_style", "chain")
    cfg.out = cfg.out or os.path.join("out", cfg.mode)
    if not cfg.init:  # a new model: GPTConfig's defaults for what is not given
        for k in MODEL_KEYS:
            if getattr(cfg, k) is None:
                setattr(cfg, k, getattr(GPTConfig, k))
    return cfg


def check_config(cfg):
    """Check every setting of a filled Config against its range; errors name the setting and the range."""
    for f in dataclasses.fields(Config):
        v, m = getattr(cfg, f.name), f.metadata
        if v is None and f.name in MODEL_KEYS:  # taken from --init
            continue
        if m["choices"] and v not in m["choices"]:
            raise ValueError(f"--{f.name} {v!r} is not allowed; choose one of {m['choices']}")
        if isinstance(v, float) and math.isinf(v):  # NaN fails the range check below
            raise ValueError(f"--{f.name} {v} must be a finite number")
        if m["lo"] is not None and not (m["lo"] <= v <= (m["hi"] if m["hi"] is not None else math.inf)):
            raise ValueError(f"--{f.name} {v} is out of range [{m['lo']}, {m['hi'] if m['hi'] is not None else 'inf'}]")
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume true and --overwrite true contradict each other: continue the run in --out, "
                         "or replace it")
    if cfg.mode not in ("eval", "demo") and cfg.steps < 1:
        raise ValueError(f"--steps must be >= 1 for mode {cfg.mode}")
    if cfg.mode == "gft":
        gft.count_sources(cfg.n_expert, cfg.n_teacher, cfg.n_rollout)
    if cfg.mode in ("sft", "dft") and cfg.batch_size % (1 + cfg.sft_teachers):
        raise ValueError(f"--batch_size {cfg.batch_size} must be a multiple of 1 + --sft_teachers "
                         f"({1 + cfg.sft_teachers}): each prompt brings its expert and its teachers")
    if cfg.sft_teachers and cfg.mode not in ("sft", "dft"):
        raise ValueError(f"--sft_teachers {cfg.sft_teachers} is for sft/dft (gft's groups take --n_teacher)")
    if cfg.mode in ("demo", "pretrain") and cfg.data:
        raise ValueError(f"--data {cfg.data}: mode {cfg.mode} runs the built-in task (pretraining always writes its "
                         f"sums); fine-tune on your data with the sft / dft / gft / grpo modes (docs/data.md)")
    if cfg.mode == "pretrain" and (cfg.expert_style != "chain" or cfg.digits != 2):
        raise ValueError(f"--expert_style {cfg.expert_style} / --digits {cfg.digits} are fine-tuning settings; "
                         f"pretraining always writes 2-digit running sums (leave them at chain / 2)")
    if cfg.updates_per_batch > 1 and cfg.mode != "gft":
        raise ValueError(f"--updates_per_batch {cfg.updates_per_batch} is for gft only (GRPO's later slices would "
                         f"need the sampling policy's log-probs for its ratio); use 1 for mode {cfg.mode}")
    if cfg.mode == "gft" and cfg.prompts_per_step % cfg.updates_per_batch:
        raise ValueError(f"--prompts_per_step {cfg.prompts_per_step} must be a multiple of --updates_per_batch "
                         f"{cfg.updates_per_batch} (each update takes an equal slice of the groups)")
    if cfg.base_mix:
        if cfg.mode != "pretrain":
            raise ValueError(f"--base_mix {cfg.base_mix} is for pretrain: fine-tuning's problems are --digits / "
                             f"--train_ops / --ood_ops settings; leave it unset for mode {cfg.mode}")
        parse_mix(cfg.base_mix)  # raises on a malformed mix
    if cfg.data and (cfg.ood_ops != 5 or cfg.train_ops != 4):
        raise ValueError(f"--train_ops {cfg.train_ops} / --ood_ops {cfg.ood_ops} shape the built-in task; a --data "
                         f"file brings its own problems (leave them at 4 / 5)")
    if cfg.ood_ops <= cfg.train_ops:
        raise ValueError(f"--ood_ops {cfg.ood_ops} must be more than --train_ops {cfg.train_ops}: the ood split is "
                         f"the held-out test's sums made longer")
    if cfg.mode in ("pretrain", "demo") and cfg.train_ops != 4:
        raise ValueError(f"--train_ops {cfg.train_ops}: mode {cfg.mode}'s gate is on 4-operand sums, the band "
                         f"every base is checked in; fine-tune at another size with sft / dft / gft / grpo / eval")
    if cfg.data and (cfg.expert_style != "chain" or cfg.digits != 2):
        raise ValueError(f"--expert_style {cfg.expert_style} / --digits {cfg.digits} change the built-in task; a "
                         f"--data file brings its own problems (leave them at chain / 2)")
    built_in = [f"--{k} {getattr(cfg, k)}" for k in ("n_prompts", "teacher_error")
                if getattr(cfg, k) != getattr(Config, k)]
    if cfg.data and built_in:
        raise ValueError(f"{' and '.join(built_in)}: the size of the built-in task's pool and the rate of its "
                         f"teachers' slips; a --data file brings its own pool and teachers (leave them unset)")
    if cfg.data and cfg.passk_split == "ood":
        raise ValueError("--passk_split ood: a --data file has a test split only (no ood); use test")
    if cfg.data and cfg.eval_split == "val":  # else settings chosen "on val" would be chosen on the test split
        raise ValueError("--eval_split val: a --data file has a test split only (its last 10%), no val; to choose "
                         "settings, hold records out by hand in a second file (eval --data scores its last 10%)")
    if cfg.mode == "grpo" and cfg.n_rollout < 2:
        raise ValueError(f"--n_rollout must be >= 2 for grpo (a group of one has no advantage), got {cfg.n_rollout}")
    if cfg.mode not in ("pretrain", "demo") and not cfg.init:
        raise ValueError(f"mode {cfg.mode} needs --init CHECKPOINT (train a base with `python train.py pretrain`)")
    if cfg.n_embd is not None and cfg.n_head is not None and cfg.n_embd % cfg.n_head:
        raise ValueError(f"--n_embd {cfg.n_embd} must be divisible by --n_head {cfg.n_head}")
    if cfg.block_size is not None and cfg.max_new_tokens >= cfg.block_size:  # else run's check_fits, on the model
        raise ValueError(f"--max_new_tokens {cfg.max_new_tokens} must be < --block_size {cfg.block_size}")
    default = fill_defaults(Config(mode=cfg.mode))  # the mode's own defaults (sentinels filled)
    reads = DEMO_READS if cfg.mode == "demo" else [k for k, modes in READ_BY.items() if cfg.mode in modes]
    unread = [f"--{k} {getattr(cfg, k)!r}" for k in Config.__dataclass_fields__
              if (k in READ_BY or cfg.mode == "demo") and k not in reads and getattr(cfg, k) != getattr(default, k)]
    if unread and cfg.mode == "demo":
        raise ValueError(f"{', '.join(unread)}: the demo reads only {', '.join('--' + k for k in DEMO_READS[1:])}; "
                         f"run the modes one by one for other settings (README, 'Modes')")
    if unread:
        raise ValueError(f"{', '.join(unread)}: mode {cfg.mode} does not read "
                         f"{'this setting' if len(unread) == 1 else 'these settings'} (it would do nothing); "
                         f"leave it unset (python train.py {cfg.mode} --help lists what it does not read)")
    return cfg


def parse_mix(text):
    """'2:0.25,3:0.45' -> {2: 0.25, 3: 0.45}, checked by data.TaskConfig; errors name --base_mix."""
    try:
        mix = {int(k): float(w) for k, w in (kv.split(":") for kv in text.split(","))}
        return D.TaskConfig(base_mix=mix).base_mix
    except ValueError as e:
        raise ValueError(f"--base_mix {text!r}: write operand counts >= 2 and weights >= 0 as "
                         f"'2:0.25,3:0.45,4:0.15,5:0.15' ({e})") from None


def make_config(**settings):
    """A checked Config with the mode's defaults filled in: Config(**settings), filled, checked."""
    return check_config(fill_defaults(Config(**settings)))


def make_optimizer(model, lr, weight_decay, beta2=0.95):
    """AdamW; weight decay on matrices only (nanoGPT), not on gains and biases."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, beta2))


# ----------------------------------------------------------------------------- checkpoints

def state_hash(state_dict):
    """Identity of a set of weights (sha256 of their bytes), to tie runs to their base model."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(path, **obj):
    """Atomic: write a temporary file, flush it to disk, then rename it over the old one, so a kill
    or a power cut at any moment leaves either the previous complete checkpoint or the new one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_jsonl(path, row):
    """One line of metrics.jsonl."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def load_checkpoint(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"checkpoint {path} is a folder; give the ckpt.pt in it")
    try:
        with zipfile.ZipFile(path) as z:  # torch.load skips the zip's CRC32s: without this check
            bad = z.testzip()             # a flipped byte in a weight loads silently
        if bad is not None:
            raise ValueError(f"CRC mismatch in {bad}")
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for a truncated or corrupted zip
        raise ValueError(f"checkpoint {path} is truncated or corrupted ({type(e).__name__}: {e})") from None
    missing = {"model", "model_config", "config", "step"} - set(ck) if isinstance(ck, dict) else {"everything"}
    if missing:
        raise ValueError(f"checkpoint {path} is not a train.py checkpoint (missing {sorted(missing)})")
    return ck


def model_from_checkpoint(ck, path="checkpoint"):
    model = GPT(GPTConfig(**ck["model_config"]))
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match its model config: {e}") from None
    return model


# ----------------------------------------------------------------------------- data

def step_rng(seed, step, tag):
    """Per-step random streams, a pure function of (seed, step, tag): nothing to save."""
    return random.Random(f"{seed}:{step}:{tag}")


def rank_tag(tag, rank):
    """The stream tag of this rank's own samples (rollouts, teachers, pretraining's orders): each
    rank draws independently of the others (the same stream on every rank would repeat one rank's
    noise on the others' prompts: the same teacher slips, the same sampling draws); rank 0 keeps the
    single-process tag, so a one-process run is unchanged."""
    return tag if rank == 0 else f"{tag}@rank{rank}"


def torch_gen(seed, step, tag, device):
    g = torch.Generator(device=device)
    g.manual_seed(int(hashlib.sha256(f"{seed}:{step}:{tag}".encode()).hexdigest()[:15], 16))
    return g


def load_problems(cfg, tok, block_size, verbose=False):
    """The fine-tuning pool and the evaluation splits. Built-in task unless --data is given;
    with --data, the last 10% of the file (at least 1) is the held-out test split."""
    if cfg.data:
        fix = ("pretrain a new base with a larger --block_size (the --init model's block is fixed), or drop "
               "the record" if cfg.init else "raise --block_size or drop the record")
        probs = D.load_jsonl(cfg.data, tok, block_size, fix=fix)
        n_test = max(1, len(probs) // 10)
        if len(probs) < 2:
            raise ValueError(f"{cfg.data}: need at least 2 records (train + test), got {len(probs)}")
        if verbose:
            print(f"{cfg.data}: {len(probs)} records read: the first {len(probs) - n_test} are the fine-tuning "
                  f"pool, the last {n_test} the held-out test split")
        return {"train": probs[:-n_test], "test": probs[-n_test:]}
    # the expert's style touches the fine-tuning pool only: the held-out splits' experts anchor KL, the same in
    # both styles; --digits changes every split but the two probes, which test what pretraining taught
    task = D.TaskConfig(digits=cfg.digits, train_ops=cfg.train_ops, ood_ops=cfg.ood_ops)
    return {"train": D.make_split("train", cfg.n_prompts, seed=cfg.seed,
                                  cfg=dataclasses.replace(task, expert_style=cfg.expert_style)),
            "test": D.make_split(cfg.eval_split, cfg.eval_n, seed=0, cfg=task),  # seed 0: every run, the same problems
            "ood": D.make_split("ood", cfg.eval_n, seed=0, cfg=task),
            "probe": D.make_split("probe", cfg.eval_n, seed=0),
            "easy": D.make_split("easy", cfg.eval_n, seed=0),
            # pass@k's own problems: a split's first ones (make_split keeps its order), passk_problems of them
            "passk": D.make_split("ood" if cfg.passk_split == "ood" else cfg.eval_split, cfg.passk_problems, seed=0,
                                  cfg=task)}


def check_fits(tok, problems, max_new_tokens, block_size, from_init=False):
    """Prompt + response budget must fit the model; say which prompt does not, and what to do."""
    for p in problems:
        n = len(tok.encode(p.prompt)) + max_new_tokens
        if n > block_size:
            fix = ("lower --max_new_tokens, or pretrain a new base with a larger --block_size (the --init "
                   "model's block is fixed)" if from_init else "raise --block_size or lower --max_new_tokens")
            raise ValueError(f"prompt {p.prompt[:40]!r} ({n - max_new_tokens} tokens) + max_new_tokens "
                             f"{max_new_tokens} = {n} > block_size {block_size}: {fix}")


def left_pad(seqs, pad_id, device):
    """list of token lists -> (B, T) left-padded tokens and (B, T) bool mask of real tokens."""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        idx[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, T - len(s):] = True
    return idx.to(device), mask.to(device)


@torch.no_grad()
def sample(model, tok, prompts, n, temperature, max_new_tokens, generator, chunk=512, fast=False, compile_step=False):
    """n completions per prompt, batched over everything with the KV cache (fast, compile_step: GPT.generate's).
    Returns (responses, stopped): token lists in prompt-major order (the eos kept when the
    row stopped), and per-row bools (False = cut at max_new_tokens)."""
    dev = next(model.parameters()).device
    seqs = [tok.encode(p) for p in prompts for _ in range(n)]
    responses, stopped = [], []
    was_training = model.training
    model.eval()
    for i in range(0, len(seqs), chunk):
        idx, mask = left_pad(seqs[i:i + chunk], tok.pad_id, dev)
        with autocast(dev):
            g = model.generate(idx, max_new_tokens, temperature=temperature, pad_mask=mask,
                               eos_id=tok.eos_id, pad_id=tok.pad_id, generator=generator, fast=fast,
                               compile_step=compile_step)
        toks, lens = g.tokens.tolist(), g.lengths.tolist()
        responses += [t[:n_] for t, n_ in zip(toks, lens)]
        stopped += g.stopped.tolist()
    model.train(was_training)
    return responses, stopped


def autocast(device):
    """bf16 autocast on GPU; plain float32 on CPU (bf16 is no faster there)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- groups

def sample_rollouts(model, tok, problems, cfg, step, n_rollout, rank=0):
    """This step's n_rollout samples per problem at --temperature, from this rank's stream:
    sample's (responses, stopped)."""
    dev = next(model.parameters()).device
    gen = torch_gen(cfg.seed, step, rank_tag("rollout", rank), dev)
    fast = cfg.fast_decode if cfg.fast_decode is not None else dev.type == "cuda"  # unset: the device decides
    return sample(model, tok, [p.prompt for p in problems], n_rollout, cfg.temperature, cfg.max_new_tokens, gen,
                  fast=fast, compile_step=fast and cfg.compile)


def build_groups(tok, problems, cfg, step, n_expert, n_teacher, rollouts=([], []), correct_only=False, rank=0):
    """One hybrid group per problem: experts, teachers (from this rank's stream), then the rollouts
    (sample_rollouts' output, n per problem in problem order), each scored by the verifier.
    correct_only: only teacher solutions the verifier accepts (SFT(mix)). Returns (groups, info for
    the logs)."""
    rng = step_rng(cfg.seed, step, rank_tag("teacher", rank))
    rollouts, stopped = rollouts
    n_rollout = len(rollouts) // len(problems)
    groups = []
    for i, p in enumerate(problems):
        texts = [("expert", p.expert)] * n_expert
        if not correct_only:
            teachers = D.teacher_solutions(p, n_teacher, rng, cfg.teacher_error)
        elif p.operands:  # a built-in teacher is wrong exactly when it slipped: error rate 0 is its generator
            teachers = D.teacher_solutions(p, n_teacher, rng, 0.0)  # conditioned on being right
        else:  # a --data record's right teachers, up to n_teacher of them (fewer if it has fewer)
            right = [t for t in p.teachers if D.verify(t, p.answer) == 1.0]
            teachers = rng.sample(right, min(n_teacher, len(right)))
        texts += [("teacher", t) for t in teachers]
        resp = [gft.Response(tok.encode(t) + [tok.eos_id], s, D.verify(t, p.answer)) for s, t in texts]
        for toks in rollouts[i * n_rollout:(i + 1) * n_rollout]:
            resp.append(gft.Response(toks, "rollout", D.verify(tok.decode_response(toks), p.answer)))
        groups.append(gft.Group(tok.encode(p.prompt), resp))
    info = {"frac_cut": (1 - sum(stopped) / len(stopped)) if stopped else 0.0}
    return groups, info


def expert_groups(tok, problems, reward=0.0):
    """One group per problem holding its expert solution (+ end of text): fixed contexts."""
    return [gft.Group(tok.encode(p.prompt), [gft.Response(tok.encode(p.expert) + [tok.eos_id], "expert", reward)])
            for p in problems]


def prompts_drawn(cfg):
    """Prompts a fine-tuning step draws from the pool: sft/dft's batch holds each prompt's expert and
    its --sft_teachers; gft/grpo's groups are one per prompt. None for the other modes."""
    if cfg.mode in ("sft", "dft"):
        return cfg.batch_size // (1 + cfg.sft_teachers)
    return cfg.prompts_per_step if cfg.mode in ("gft", "grpo") else None


def draw(pool, n, seed, step, rank, world):
    """This step's problems for this rank: n drawn from the pool without replacement (the
    same draw on every rank; with replacement when n > the pool), then rank r takes every
    world-th one."""
    rng = step_rng(seed, step, "draw")  # one stream per step: a fresh stream per pick makes every pick the same
    chosen = rng.sample(range(len(pool)), n) if n <= len(pool) else rng.choices(range(len(pool)), k=n)
    return [pool[i] for i in chosen][rank::world]


def ddp_weight(mask, agg, world):
    """Scale of a rank's loss so that DDP's gradient average equals the loss over the global
    batch: (local denominator / global denominator) * world. 1.0 in a single process."""
    if world == 1:
        return 1.0
    local = mask.sum() if agg == "token-mean" else (mask.sum(1) > 0).sum()
    total = local.clone().float()
    dist.all_reduce(total)
    return float(local) / float(total) * world


# ----------------------------------------------------------------------------- one step per mode

class LogProbs(torch.nn.Module):
    """GPT.token_logprobs as a module's forward, so DDP and torch.compile can wrap it."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, tokens, resp_mask, with_entropy=True):
        return self.gpt.token_logprobs(tokens, resp_mask, with_entropy)


def train_step(model, logprob_fn, tok, cfg, step, pool, ref_model, rank, world):
    """Compute this step's loss (not yet backpropagated) and its metrics. model samples the
    rollouts; logprob_fn (LogProbs, maybe DDP- or compile-wrapped) gives the trained log-probs."""
    groups, info = step_groups(model, tok, cfg, step, pool, rank, world)
    return step_loss(logprob_fn, tok, cfg, groups, info, ref_model, world, next(model.parameters()).device)


def step_groups(model, tok, cfg, step, pool, rank, world):
    """This step's groups for this rank, as the mode builds them, and info for the logs."""
    if cfg.mode == "pretrain":  # language modelling on the base mix, loss on the solution only
        rng = step_rng(cfg.seed, step, rank_tag("base", rank))
        task = D.TaskConfig(base_mix=parse_mix(cfg.base_mix)) if cfg.base_mix else D.TaskConfig()
        probs = D.make_split("base", cfg.batch_size, seed=f"{cfg.seed}:{step}", cfg=task)[rank::world]
        groups = [gft.Group(tok.encode(p.prompt),
                            [gft.Response(tok.encode(D.pretrain_solution(p, rng, task)) + [tok.eos_id], "expert", 1.0)])
                  for p in probs]
        info = {}
    elif cfg.mode in ("sft", "dft"):  # demonstrations, reward 1 (tests: GFT(tau=0) on one expert == SFT)
        probs = draw(pool, prompts_drawn(cfg), cfg.seed, step, rank, world)
        groups, info = build_groups(tok, probs, cfg, step, 1, cfg.sft_teachers, correct_only=True, rank=rank)
    else:
        probs = draw(pool, prompts_drawn(cfg), cfg.seed, step, rank, world)
        n_e, n_t = (cfg.n_expert, cfg.n_teacher) if cfg.mode == "gft" else (0, 0)
        rollouts = sample_rollouts(model, tok, probs, cfg, step, cfg.n_rollout, rank)
        groups, info = build_groups(tok, probs, cfg, step, n_e, n_t, rollouts, rank=rank)
    return groups, info


def step_loss(logprob_fn, tok, cfg, groups, info, ref_model, world, dev):
    """The mode's loss on the groups (not yet backpropagated) and the step's metrics; dev: the model's device."""
    batch = gft.flatten_groups(groups, tok.pad_id, scale=cfg.adv_scale)
    tokens, resp = batch.tokens.to(dev), batch.resp_mask.to(dev)  # (N, L) each, copied once
    mask = resp[:, 1:]  # (N, L-1) loss mask
    adv = batch.advantages.to(dev)  # (N,)
    with autocast(dev):
        lp, ent = logprob_fn(tokens, resp)  # (N, L-1) each
    if cfg.mode in ("pretrain", "sft"):
        loss = gft.sft_loss(lp, mask)
    elif cfg.mode == "dft":
        loss = gft.dft_loss(lp, mask)
    elif cfg.mode == "gft":
        loss = gft.gft_loss(lp, adv, mask, cfg.tau, agg=cfg.agg)
    else:  # grpo: one on-policy update, so old = current: the ratio is 1 and PPO's clip (grpo_loss's clip_eps)
        # never binds, which is why it is no setting here; KL to the --init model
        ref = None
        if cfg.kl_beta > 0:
            with torch.no_grad(), autocast(dev):
                ref, _ = ref_model.token_logprobs(tokens, resp, with_entropy=False)
        loss = gft.grpo_loss(lp, lp.detach(), adv, mask, ref_logprobs=ref, beta=cfg.kl_beta, agg=cfg.agg)
    agg = "token-mean" if cfg.mode in ("pretrain", "sft", "dft") else cfg.agg
    loss = loss * ddp_weight(mask, agg, world)
    n_tok = int(mask.sum())
    m = {"loss": loss.item(), "entropy": float(ent[mask].mean()), "tokens": int(tokens.numel()),
         "resp_tokens": n_tok, **info}
    if cfg.mode in ("gft", "grpo"):
        m.update({k.replace("/", "_"): v for k, v in gft.source_stats(batch).items()})
        m["reward"] = batch.rewards.mean().item()
        m.update(gft.dcr_stats(lp, mask, cfg.tau if cfg.mode == "gft" else 0.0))
    return loss, m


# ----------------------------------------------------------------------------- evaluation

def pass_at_k(n, c, k):
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), as a stable product."""
    if k > n:
        raise ValueError(f"pass@k needs k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


@torch.no_grad()
def greedy_accuracy(model, tok, problems, max_new_tokens):
    """Greedy accuracy and the (problem, completion) pairs it got wrong."""
    outs, _ = sample(model, tok, [p.prompt for p in problems], 1, 0.0, max_new_tokens, None)
    texts = [tok.decode_response(o) for o in outs]
    wrong = [(p, t) for p, t in zip(problems, texts) if D.verify(t, p.answer) != 1.0]
    return 1 - len(wrong) / len(problems), wrong


@torch.no_grad()
def kl_to_base(model, base, tok, groups):
    """Forward KL(base || model) per response token, on fixed contexts (the groups' prompt +
    response): sum_v p_base(v) (log p_base(v) - log p_model(v)), averaged over tokens."""
    dev = next(model.parameters()).device
    b = gft.flatten_groups(groups, tok.pad_id)
    tokens, mask = b.tokens.to(dev), b.resp_mask[:, 1:].to(dev)
    with autocast(dev):
        lq = F.log_softmax(model(tokens[:, :-1])[0].float(), -1)  # (N, L-1, V)
        lb = F.log_softmax(base(tokens[:, :-1])[0].float(), -1)
    kl = (lb.exp() * (lb - lq)).sum(-1)  # (N, L-1)
    return float(kl[mask].mean())


@torch.no_grad()
def base_sample_groups(base, tok, problems, max_new_tokens):
    """One response per problem sampled from the base at T=1 with a fixed generator, so every run
    from this base gets the same contexts (the official code logs KL on fixed prompts; how it picks
    the responses is not in our notes)."""
    gen = torch_gen(0, 0, "kl", next(base.parameters()).device)
    outs, _ = sample(base, tok, [p.prompt for p in problems], 1, 1.0, max_new_tokens, gen)
    return [gft.Group(tok.encode(p.prompt), [gft.Response(o, "rollout")]) for p, o in zip(problems, outs)]


@torch.no_grad()
def evaluate(model, tok, splits, cfg, base=None, full=True):
    """Held-out metrics. full=False (during training): greedy test accuracy and KL only."""
    was_training = model.training
    model.eval()
    r = {}
    acc, wrong = greedy_accuracy(model, tok, splits["test"], cfg.max_new_tokens)
    r["acc_test"] = acc
    if base is not None and "probe" in splits:
        anchors = splits["test"][:cfg.kl_n] + splits["probe"][:cfg.kl_n]
        r["kl_base"] = kl_to_base(model, base, tok, expert_groups(tok, anchors))  # on the experts' solutions
        if full:  # and on the base's own samples of the same prompts (the official code's measure)
            r["kl_base_samples"] = kl_to_base(model, base, tok, base_sample_groups(base, tok, anchors,
                                                                                   cfg.max_new_tokens))
    if full:
        for s in ("ood", "probe", "easy"):
            if s in splits:
                r[f"acc_{s}"], _ = greedy_accuracy(model, tok, splits[s], cfg.max_new_tokens)
        probs = splits.get("passk", splits["test"])[:cfg.passk_problems]  # a --data file: its test split
        gen = torch_gen(cfg.seed, 0, "eval", next(model.parameters()).device)
        outs, _ = sample(model, tok, [p.prompt for p in probs], cfg.passk_n, 1.0, cfg.max_new_tokens, gen)
        n = cfg.passk_n
        correct = [[D.verify(tok.decode_response(o), p.answer) == 1.0 for o in outs[i * n:(i + 1) * n]]
                   for i, p in enumerate(probs)]
        k = 1
        while k <= n:
            r[f"pass@{k}"] = sum(pass_at_k(n, sum(c), k) for c in correct) / len(probs)
            k *= 2
        synthetic = bool(probs[0].operands)
        if synthetic:  # strict trace accuracy and the number of distinct correct paths
            strict = [[D.verify_trace(tok.decode_response(o), p) == 1.0 for o in outs[i * n:(i + 1) * n]]
                      for i, p in enumerate(probs)]
            r["pass@1_strict"] = sum(map(sum, strict)) / (n * len(probs))
            paths = [len({D.solution_path(tok.decode_response(o))
                          for o, ok in zip(outs[i * n:(i + 1) * n], strict[i]) if ok}) for i in range(len(probs))]
            solved = [c for c in paths if c > 0]
            r["paths"] = sum(solved) / len(solved) if solved else 0.0
        groups = [gft.Group(tok.encode(p.prompt), [gft.Response(o, "rollout") for o in outs[i * n:(i + 1) * n]])
                  for i, p in enumerate(probs)]
        b = gft.flatten_groups(groups, tok.pad_id)
        dev = next(model.parameters()).device
        with autocast(dev):
            _, ent = model.token_logprobs(b.tokens.to(dev), b.resp_mask.to(dev))
        r["entropy"] = float(ent[b.resp_mask[:, 1:].to(dev)].mean())
        r["failures"] = [{"prompt": p.prompt, "completion": t, "expected": p.answer} for p, t in wrong[:3]]
    model.train(was_training)
    return r


# ----------------------------------------------------------------------------- the base model's band

# GFT and GRPO learn from groups with mixed rewards, so the base must sometimes be right and
# sometimes wrong: held-out pass@1 at temperature 1 inside BASE_BAND, greedy accuracy at most
# BASE_GREEDY_MAX (a saturated base leaves nothing to learn). Learning to carry arrives as a sudden
# drop in loss whose timing varies with the seed, the thread count and the processor, so
# pretraining runs until the val split shows it (the gate), not for a fixed number of steps.
BASE_BAND = (0.10, 0.50)
BASE_GREEDY_MAX = 0.95


@torch.no_grad()
def gate_check(model, tok, problems, cfg, step):
    """The gate's measurement on val problems: pass@1 at T=1 from 4 samples each, and greedy accuracy."""
    gen = torch_gen(cfg.seed, step, "gate", next(model.parameters()).device)
    outs, _ = sample(model, tok, [p.prompt for p in problems], 4, 1.0, cfg.max_new_tokens, gen)
    right = [D.verify(tok.decode_response(o), problems[i // 4].answer) for i, o in enumerate(outs)]
    acc, _ = greedy_accuracy(model, tok, problems, cfg.max_new_tokens)
    return {"val_pass@1": sum(right) / len(right), "val_acc": acc}


def base_band_problem(r):
    """'' when held-out metrics r (evaluate's) are in the band GFT needs, else what is wrong and what to do."""
    p1, acc = r["pass@1"], r["acc_test"]
    lo, hi = BASE_BAND
    if p1 < lo:
        return (f"held-out pass@1 {p1:.3f} is below {lo} (greedy accuracy {acc:.3f}): the base has not learned "
                f"the task yet, so GFT's groups would have no reward. Pretrain longer (raise --steps, the gate's "
                f"cap) or try another --seed")
    if p1 > hi or acc > BASE_GREEDY_MAX:
        return (f"held-out pass@1 {p1:.3f} (band [{lo}, {hi}]) and greedy accuracy {acc:.3f} (at most "
                f"{BASE_GREEDY_MAX}): the base already solves the task, so fine-tuning has little to show. "
                f"Pretrain with a lower --gate_pass1 or --gate_every")
    return ""


def require_base_in_band(r, path):
    """Stop (SystemExit with the measured figures) when the base at path is outside its band."""
    problem = base_band_problem(r)
    if problem:
        raise SystemExit(f"error: base model {path} is outside the band GFT needs: {problem}.")


# ----------------------------------------------------------------------------- the run

def setup_distributed(cfg):
    """(rank, world, device). Under torchrun: one process per rank, gloo on CPU, nccl on GPU.
    On GPU each process takes cuda:LOCAL_RANK; more processes than GPUs stop with a message
    (nccl does not run two ranks on one device), --device cpu runs any number on gloo."""
    if "RANK" not in os.environ:
        return 0, 1, pick_device(cfg.device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = pick_device(cfg.device)
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        asked = int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1))  # processes on this node
        n_gpu = torch.cuda.device_count()
        if asked > n_gpu:  # every rank checks, so all stop at once (rank 0 would wait in init otherwise)
            raise SystemExit(
                f"torchrun started {asked} processes on this node but it has {n_gpu} GPU(s): each process "
                f"needs its own GPU (process {local_rank} would use cuda:{local_rank}). Run with "
                f"--nproc_per_node {max(1, n_gpu)} or fewer, or add --device cpu to run "
                f"{asked} processes on the CPU (gloo).")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def lr_at(step, cfg):
    """Linear warm-up, then constant, or cosine decay to lr * min_lr_ratio at step index --steps
    (one past the last step, as nanoGPT's lr_decay_iters: the last step trains a hair above the floor)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def fmt(m):
    keys = [("loss", "loss", ".4f"), ("reward", "reward", ".2f"), ("frac_zero_var", "zero-var", ".2f"),
            ("acc_test", "acc", ".3f"), ("kl_base", "kl", ".4f"), ("entropy", "entropy", ".3f"),
            ("grad_norm", "grad", ".2f"), ("frac_below_tau", "p<tau", ".2f"),
            ("ms_per_step", "ms/step", ".0f"), ("tok_per_s", "tok/s", ".0f")]
    return " | ".join(f"{label} {m[k]:{f}}" for k, label, f in keys if k in m)


@dataclass
class RunState:
    """What the steps of run share: made by set_up, advanced by resume and the loop."""
    rank: int
    world: int
    device: torch.device
    tok: D.Tokenizer
    model: GPT
    splits: dict                 # problems: train (the fine-tuning pool), test, and built-in ood / probe / easy
    ckpt_path: str
    metrics_path: str
    init: dict = None            # the --init checkpoint
    base: GPT = None             # frozen model that KL(base || model) is measured against
    base_info: dict = None       # its path, sha and weights, kept in every checkpoint
    optim: torch.optim.Optimizer = None
    logprob_fn: torch.nn.Module = None  # LogProbs(model), maybe DDP- or compile-wrapped
    start: int = 0               # first step to run: the resumed checkpoint's step
    skipped: int = 0             # non-finite steps skipped so far
    finished: bool = False
    gate: dict = None            # the pretraining gate's last check
    saved: int = None            # the step of this run's last checkpoint (None: none written or resumed yet)

    @property
    def master(self):
        return self.rank == 0


def run(cfg):
    """Train (or evaluate) one mode; returns the final evaluation metrics."""
    check_out(cfg)
    s = set_up(cfg)
    if cfg.mode == "eval":
        return evaluate_init(cfg, s)
    resume(cfg, s)
    loop(cfg, s)
    return finish(cfg, s)


def check_out(cfg):
    """--out must be a folder. One that holds a run (ckpt.pt) is continued (--resume) or replaced
    (--overwrite: resume() removes its checkpoint and clears its log before the first step), never
    replaced silently, and never by eval, which would rewrite its log."""
    ckpt = os.path.join(cfg.out, "ckpt.pt")
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise ValueError(f"--out {cfg.out} is a file, not a folder")
    if not os.path.exists(ckpt):
        return
    if cfg.mode == "eval":
        raise ValueError(f"--out {cfg.out} holds a training run ({ckpt}); eval would replace its metrics.jsonl: "
                         f"give eval another --out")
    if cfg.overwrite and cfg.init and os.path.abspath(cfg.init) == os.path.abspath(ckpt):
        raise ValueError(f"--init {cfg.init} is the checkpoint that --overwrite would remove: copy it elsewhere "
                         f"first, or give another --out")
    if cfg.resume or cfg.overwrite:
        return
    raise ValueError(f"--out {cfg.out} already holds a run ({ckpt}): pass --resume true to continue it, "
                     f"--overwrite true to start again in its place, or choose another --out")


def set_up(cfg):
    """Processes, seed, tokenizer, the model (new, or --init's and its base), the problems."""
    rank, world, device = setup_distributed(cfg)
    if cfg.mode == "gft" and cfg.prompts_per_step % (world * cfg.updates_per_batch):
        raise ValueError(f"--prompts_per_step {cfg.prompts_per_step} must be a multiple of {world} processes x "
                         f"--updates_per_batch {cfg.updates_per_batch}: each process slices its groups equally")
    torch.manual_seed(cfg.seed)
    tok = D.Tokenizer(cfg.tokenizer)
    init, base, base_info = None, None, None
    if cfg.init:
        init = load_checkpoint(cfg.init)
        model = model_from_checkpoint(init, cfg.init)
        for k in MODEL_KEYS:  # the model comes from the checkpoint; a setting given must agree with it
            have = init["model_config"][k]
            if getattr(cfg, k) not in (None, have):
                raise ValueError(f"--{k} {getattr(cfg, k)} differs from {cfg.init}'s {k}={have}")
        if init["model_config"]["vocab_size"] != tok.vocab_size:
            raise ValueError(f"{cfg.init} was trained with vocab_size {init['model_config']['vocab_size']}, "
                             f"tokenizer {cfg.tokenizer!r} has {tok.vocab_size}")
        # the base whose drift we measure: the init's own base if it has one, else the init itself
        base_info = init.get("base") or {"path": cfg.init, "sha": state_hash(init["model"]), "state": init["model"]}
        if cfg.mode != "eval" or init.get("base"):
            base = model_from_checkpoint({"model": base_info["state"], "model_config": init["model_config"]})
    else:
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, **{k: getattr(cfg, k) for k in MODEL_KEYS}))
    model.to(device)
    if base is not None:
        base.to(device).eval().requires_grad_(False)
    splits = load_problems(cfg, tok, model.config.block_size, verbose=rank == 0)
    for k in ("train", "test", "ood"):  # a built-in solution (+ end of text) must fit a rollout's budget
        cut = [p for p in splits.get(k, []) if p.operands and len(tok.encode(p.expert)) + 1 > cfg.max_new_tokens]
        msg = (f"--max_new_tokens {cfg.max_new_tokens} cuts {len(cut)} built-in {k} solution(s) such as "
               f"{cut[0].expert!r} ({len(tok.encode(cut[0].expert)) + 1} tokens with its end of text)" if cut else "")
        if cut and k != "ood":
            raise ValueError(msg + ": raise it")
        if cut and rank == 0:  # harder problems than trained on: reported, not fatal
            print(f"WARNING: {msg}; those answers cannot be reached (raise --max_new_tokens)", file=sys.stderr)
    check_fits(tok, splits["train"] + splits["test"], cfg.max_new_tokens, model.config.block_size, bool(cfg.init))
    if rank == 0:
        warn_settings(cfg, len(splits["train"]))
    return RunState(rank, world, device, tok, model, splits, os.path.join(cfg.out, "ckpt.pt"),
                    os.path.join(cfg.out, "metrics.jsonl"), init, base, base_info)


def warn_settings(cfg, pool):
    """Settings that run but may not do what was meant: said on stderr, once, at the start."""
    per_step = prompts_drawn(cfg)
    if per_step and per_step > pool:
        print(f"WARNING: a step draws {per_step} prompts from a pool of {pool}: more than it holds, so each step "
              f"draws with replacement and repeats prompts (lower "
              f"{'--batch_size' if cfg.mode in ('sft', 'dft') else '--prompts_per_step'}, or give more prompts)",
              file=sys.stderr)
    if cfg.mode in TRAINING and cfg.warmup > cfg.steps:
        print(f"WARNING: --warmup {cfg.warmup} > --steps {cfg.steps}: the learning rate only reaches "
              f"{lr_at(cfg.steps - 1, cfg):.3g} of --lr {cfg.lr:g} (lower --warmup)", file=sys.stderr)


def evaluate_init(cfg, s):
    """eval mode: the --init model's held-out metrics, printed and written to --out."""
    r = evaluate(s.model, s.tok, s.splits, cfg, s.base)
    r["step"] = s.init["step"]  # the checkpoint's: how long its model was trained
    if s.master:
        os.makedirs(cfg.out, exist_ok=True)
        with open(s.metrics_path, "w") as f:
            f.write(json.dumps({"final": r}) + "\n")
        print_final(r)
    return r


def resume(cfg, s):
    """The optimiser; with --resume, the run in --out continues from its checkpoint. Then the log's head."""
    s.optim = make_optimizer(s.model, cfg.lr, cfg.weight_decay, cfg.adam_beta2)
    if cfg.resume and os.path.exists(s.ckpt_path):
        ck = load_checkpoint(s.ckpt_path)
        was = {**dataclasses.asdict(fill_defaults(Config(mode=ck["config"].get("mode", cfg.mode)))),
               **ck["config"]}  # a setting newer than the checkpoint: its default
        changed = {k: (was[k], v) for k, v in dataclasses.asdict(cfg).items()
                   if k not in RUN_KEYS_IGNORED_ON_RESUME and was[k] != v}
        if changed and not cfg.override:
            raise ValueError(f"--resume with settings that differ from {s.ckpt_path}: "
                             + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
                             + " (pass --override true to continue anyway)")
        s.model.load_state_dict(ck["model"])
        s.optim.load_state_dict(ck["optimizer"])
        s.start = s.saved = ck["step"]
        s.skipped = ck.get("skipped", 0)
        s.gate = ck.get("gate")  # a gated run ends at its first met check; otherwise at --steps (a resume may raise it)
        s.finished = bool(s.gate and s.gate["met"]) or s.start >= cfg.steps
        if s.master:
            print(f"resumed {s.ckpt_path} at step {s.start}")
    elif cfg.resume and s.master:
        print(f"--resume: no checkpoint in {cfg.out} yet, starting fresh")
    s.logprob_fn = LogProbs(s.model)
    if s.world > 1:  # gradients are all-reduced (averaged) in backward; see ddp_weight
        s.logprob_fn = torch.nn.parallel.DistributedDataParallel(s.logprob_fn)
    if cfg.compile:
        s.logprob_fn = torch.compile(s.logprob_fn)
    if s.master:
        os.makedirs(cfg.out, exist_ok=True)
        _trim_metrics(s.metrics_path, s.start)
        if cfg.overwrite and os.path.exists(s.ckpt_path):  # now, with the log: a run killed before its first
            os.remove(s.ckpt_path)                         # save must not leave the old checkpoint to resume
        if s.start == 0:
            append_jsonl(s.metrics_path, {"config": dataclasses.asdict(cfg), "world": s.world,
                                          "params": s.model.num_params(), "base": s.base_info and s.base_info["sha"]})
        print(f"{cfg.mode}: {cfg.steps} steps on {s.device} x{s.world}, {s.model.num_params() / 1e6:.2f}M params "
              f"(non-embedding), lr {cfg.lr:g}, out {cfg.out}")


def kl_reference(cfg, s):
    """grpo's KL anchor (None without --kl_beta): the --init model as loaded, frozen, as verl's reference policy
    is the actor's starting weights. From a pretrained base that is s.base; after sft or gft it is that run's
    result, while s.base stays the original base, whose drift kl_base measures."""
    if cfg.mode != "grpo" or cfg.kl_beta == 0:
        return None
    if not s.init.get("base"):  # --init is a base: s.base holds its weights already
        return s.base
    return model_from_checkpoint(s.init, cfg.init).to(s.device).eval().requires_grad_(False)


def loop(cfg, s):
    """Steps s.start .. --steps: train, log, check the gate, checkpoint; stop early when the gate is met."""
    ref_model = kl_reference(cfg, s)
    gate_probs = D.make_split("val", cfg.gate_n, seed=0) if cfg.mode == "pretrain" and cfg.gate_pass1 > 0 else None
    s.model.train()
    t_last, tok_count, logged = time.time(), 0, s.start
    for step in range(s.start, cfg.steps if not s.finished else s.start):
        torch.manual_seed(cfg.seed * 100003 + step)  # dropout, if any: a function of the step
        for g in s.optim.param_groups:
            g["lr"] = lr_at(step, cfg)
        if cfg.updates_per_batch == 1:
            loss, m = train_step(s.model, s.logprob_fn, s.tok, cfg, step, s.splits["train"], ref_model, s.rank, s.world)
            gnorm = update(cfg, s, step, loss)
        else:
            m, gnorm = minibatch_updates(cfg, s, step)
        tok_count += m["tokens"] * s.world
        last = step + 1 == cfg.steps
        evaluated = bool(cfg.eval_every) and (step + 1) % cfg.eval_every == 0 and not last
        if ((step + 1) % cfg.log_every == 0 or evaluated or last) and s.master:  # an evaluation is always logged
            dt = time.time() - t_last  # training time since the last line; evaluation not included
            m.update(step=step + 1, grad_norm=gnorm, lr=lr_at(step, cfg), skipped=s.skipped,
                     ms_per_step=1000 * dt / (step + 1 - logged), tok_per_s=tok_count / dt)
            if evaluated:
                m.update(evaluate(s.model, s.tok, s.splits, cfg, s.base, full=False))
            print(f"step {step + 1}/{cfg.steps} | {fmt(m)}", flush=True)
            append_jsonl(s.metrics_path, m)
            t_last, tok_count, logged = time.time(), 0, step + 1
        if gate_probs is not None and ((step + 1) % cfg.gate_every == 0 or last):
            t_gate = time.time()
            s.finished = check_gate(cfg, s, gate_probs, step + 1) or last
            t_last += time.time() - t_gate  # ms/step and tok/s count training time only
        else:
            s.finished = last
        if (step + 1) % cfg.ckpt_every == 0 or s.finished:
            checkpoint(cfg, s, step + 1)
        if s.finished:
            break


def update(cfg, s, step, loss):
    """Backward, clip, optimiser step; a non-finite loss or gradient stops the run (or, with
    --skip_nonfinite, skips the step). Returns the gradient norm before clipping."""
    s.optim.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    bad = [name for name, v in (("loss", loss.item()), ("grad norm", gnorm.item())) if not math.isfinite(v)]
    if not bad:
        s.optim.step()
        return gnorm.item()
    if not cfg.skip_nonfinite:
        kept = (f"The last checkpoint, {s.ckpt_path} at step {s.saved}, is intact" if s.saved is not None else
                "No checkpoint was written yet")
        raise FloatingPointError(f"step {step + 1}: non-finite {' and '.join(bad)}; stopping. {kept} (pass "
                                 f"--skip_nonfinite true to skip such steps)")
    s.skipped += 1
    s.optim.zero_grad(set_to_none=True)
    if s.master:
        print(f"step {step + 1}: non-finite {' and '.join(bad)}, skipped ({s.skipped} so far)")
    return gnorm.item()


def minibatch_updates(cfg, s, step):
    """The official GFT recipe: one rollout batch, then --updates_per_batch optimiser updates,
    each on the next equal slice of its groups (no ratio: GFT's loss has none). Returns the
    slices' mean metrics (tokens summed) and their largest gradient norm."""
    groups, info = step_groups(s.model, s.tok, cfg, step, s.splits["train"], s.rank, s.world)
    n = len(groups) // cfg.updates_per_batch  # exact: set_up checked the divisibility
    ms, norms = [], []
    for u in range(cfg.updates_per_batch):
        loss, m = step_loss(s.logprob_fn, s.tok, cfg, groups[u * n:(u + 1) * n], info, None, s.world, s.device)
        norms.append(update(cfg, s, step, loss))
        ms.append(m)
    keys = dict.fromkeys(k for x in ms for k in x)  # a source missing from a slice has no reward/<source>
    m = {k: (sum if k.endswith("tokens") else statistics.fmean)([x[k] for x in ms if k in x]) for k in keys}
    return m, max(norms)


def check_gate(cfg, s, problems, step):
    """The pretraining gate at this step: measure on val, log it, keep it in s.gate; True when met."""
    g = gate_check(s.model, s.tok, problems, cfg, step) if s.master else {}
    met = rank0_says(s.master and g["val_pass@1"] >= cfg.gate_pass1, s.world, s.device)
    s.gate = dict(met=met, step=step, target=cfg.gate_pass1, **g)
    if s.master:
        print(f"gate at step {step}: val pass@1 {g['val_pass@1']:.3f} (target {cfg.gate_pass1}), "
              f"val greedy {g['val_acc']:.3f}: {'met, pretraining stops' if met else 'not yet'}", flush=True)
        append_jsonl(s.metrics_path, {"gate": s.gate})  # its own row: training rows alone carry "step"
    return met


def checkpoint(cfg, s, step):
    """Rank 0 writes the run's state at this step (save_checkpoint: atomic)."""
    s.saved = step
    if s.master:
        save_checkpoint(s.ckpt_path, model=s.model.state_dict(), optimizer=s.optim.state_dict(), step=step,
                        skipped=s.skipped, finished=s.finished, gate=s.gate, config=dataclasses.asdict(cfg),
                        model_config=dataclasses.asdict(s.model.config), base=s.base_info, tokenizer=cfg.tokenizer)


def finish(cfg, s):
    """Rank 0: the gate's warning if it was not met, the final evaluation, its line and a few failures."""
    r = {}
    if s.master:
        gate = s.gate
        if gate is not None and not gate["met"]:
            print(f"WARNING: the pretraining gate was not met in {cfg.steps} steps (val pass@1 "
                  f"{gate['val_pass@1']:.3f} < {cfg.gate_pass1}): this base is not ready for fine-tuning; "
                  f"resume with a larger --steps (--resume true --override true) or try another --seed")
        r = evaluate(s.model, s.tok, s.splits, cfg, s.base)
        r["step"] = gate["step"] if gate else cfg.steps
        if gate is not None:
            r["gate"] = gate
        append_jsonl(s.metrics_path, {"final": r})
        print_final(r)
    if s.world > 1:
        dist.barrier()
    return r


def print_final(r):
    """The final evaluation's line, then a few failures (prompt, completion, expected)."""
    print(f"final | {fmt(r)} | " + " | ".join(f"{k} {v:.3f}" for k, v in r.items()
                                              if k.startswith(("acc_", "pass@", "paths"))))
    for fl in r.get("failures", []):
        print(f"  failure: {fl['prompt']} -> {fl['completion']!r} (expected {fl['expected']})")


def rank0_says(flag, world, device):
    """Rank 0's decision on every rank (each rank must leave the loop at the same step)."""
    if world == 1:
        return bool(flag)
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def _trim_metrics(path, step):
    """On resume, drop log lines written after the checkpoint's step (they will be replayed);
    at step 0 (no checkpoint yet) drop them all, so the config line is written once."""
    if not os.path.exists(path):
        return
    with open(path) as f:  # (line number, line); at step 0 none is kept, so none is read (a damaged one neither)
        numbered = [(i, l) for i, l in enumerate(f, start=1) if l.strip()] if step else []
    if numbered and not numbered[-1][1].endswith("\n"):  # torn by a crash in mid-write: never complete
        numbered.pop()
    lines, rows = [l for _, l in numbered], []
    for i, l in numbered:
        try:
            rows.append(json.loads(l))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not a JSON line ({e.msg}); mend or delete that line to resume") from None
    keep = [l for l, m in zip(lines, rows) if "final" not in m
            and m.get("step", m.get("gate", {}).get("step", 0)) <= step] if step else []
    with open(path + ".tmp", "w") as f:
        f.writelines(keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)  # atomic, as checkpoints: a kill here loses no line


# ----------------------------------------------------------------------------- demo

DEMO_STEPS = 30  # the demo's SFT and GFT steps (20 of them warm-up, as in the quick regimes run that showed
# the off-policy expert's pull at 30 steps: docs/results.md); the whole demo took 3.3 minutes on 2 CPU cores


def demo(cfg):
    """The main job: pretrain a base (or reuse it), then SFT and GFT from it on an expert written in
    a form pretraining never shows (--expert_style tree: the paper's premise, an off-policy expert),
    the same prompts and the same number of trained sequences per step; one table, then what it
    says. About 3.5 to 5 minutes on 2 CPU cores. --expert_style chain runs the control (the expert as
    pretraining writes). It reads only DEMO_READS (any other setting is an error); its SFT and GFT
    runs replace the previous demo's."""
    style = cfg.expert_style
    regime = "never in pretraining: off-policy" if style != "chain" else "as pretraining writes: the control"
    print(f"demo: pretrain a base model (or reuse one), fine-tune it with SFT and with GFT on {style}-form expert\n"
          f"solutions ({regime}), evaluate all three. About 3.5 to 5 minutes on 2 CPU cores (less when the base "
          f"is reused).")
    t0 = time.time()
    root = cfg.out
    base_ckpt = os.path.join(root, "base", "ckpt.pt")
    common = dict(seed=cfg.seed, device=cfg.device, eval_n=cfg.eval_n, passk_problems=cfg.passk_problems,
                  passk_n=cfg.passk_n, kl_n=cfg.kl_n)
    rows = {}
    if os.path.exists(base_ckpt) and load_checkpoint(base_ckpt).get("finished"):
        print(f"reusing base model {base_ckpt} (delete it to retrain)")
        rows["base"] = run(make_config(mode="eval", init=base_ckpt, out=os.path.join(root, "base_eval"), **common))
    else:  # pretraining ends with the same evaluation
        rows["base"] = run(make_config(mode="pretrain", out=os.path.dirname(base_ckpt), resume=True, log_every=250,
                                       **common))
    require_base_in_band(rows["base"], base_ckpt)  # a base outside the band makes the table meaningless
    # the premise, measured: how likely each form of the same solutions is under the base
    base = model_from_checkpoint(load_checkpoint(base_ckpt), base_ckpt).to(pick_device(cfg.device)).eval()
    tok = D.Tokenizer()
    lp = {s: expert_logprob(base, tok, D.make_split("train", 64, seed=cfg.seed, cfg=D.TaskConfig(expert_style=s)))
          for s in D.EXPERT_STYLES}
    print("premise: under the base, expert solutions average log-prob per token "
          + ", ".join(f"{lp[s]:.2f} in {s} form" for s in D.EXPERT_STYLES) + " (chain: as pretraining writes)")
    fine = dict(init=base_ckpt, steps=DEMO_STEPS, expert_style=style, log_every=10, overwrite=True,  # rerun each time
                **common)
    gft_cfg = make_config(mode="gft", out=os.path.join(root, f"gft_{style}"), **fine)
    group = gft_cfg.prompts_per_step * (gft_cfg.n_expert + gft_cfg.n_teacher + gft_cfg.n_rollout)  # sequences per GFT step
    rows["sft"] = run(make_config(mode="sft", out=os.path.join(root, f"sft_{style}"), batch_size=group, **fine))
    rows["gft"] = run(gft_cfg)
    cols = ["acc_test", "acc_ood", "acc_probe", "acc_easy", "pass@1", "pass@16", "pass@1_strict", "paths", "entropy",
            "kl_base", "kl_base_samples"]
    print(f"\nheld-out results ({cfg.eval_n} problems per split; pass@k from {cfg.passk_n} samples of "
          f"{cfg.passk_problems} problems; kl = KL(base || model) per token, on expert solutions and on the "
          f"base's own samples)")
    print("| model | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.3f}" if c in r else "-" for c in cols) + " |")
    print("\n" + demo_reading(rows, lp, style, root))
    print(f"demo took {(time.time() - t0) / 60:.1f} min")
    return rows


def demo_reading(rows, lp, style, out):
    """Plain sentences that read the demo's own table: rows {name: final metrics}, lp {style: mean
    log-prob per token under the base}; nothing in them is fixed in advance."""
    b, s, g = (round(rows[k]["acc_test"], 2) for k in ("base", "sft", "gft"))  # compared as printed
    ks, kg = (round(rows[k]["kl_base_samples"], 3) for k in ("sft", "gft"))
    lead = "above" if g > s else "below" if g < s else "level with"
    drift = "less" if kg < ks else "more" if kg > ks else "the same"
    form = (f"{style}-form demonstrations (log-prob {lp[style]:.2f} per token under the base, against "
            f"{lp['chain']:.2f} for the form it writes)" if style != "chain" else
            f"chain-form demonstrations, the form the base writes (log-prob {lp['chain']:.2f} per token)")
    other = "chain" if style != "chain" else "tree"
    return (f"On {form}, {DEMO_STEPS} steps of SFT took held-out accuracy from {b:.2f} to {s:.2f} and GFT to "
            f"{g:.2f}, {lead} SFT, with {drift} drift from the base on its own samples (KL {kg:.3f} against "
            f"{ks:.3f}).\nOne base, one learning rate: an illustration, not a finding; the pre-registered "
            f"comparison over three bases and every rate is in README \"Results\".\nThe other regime, on the "
            f"same base: python train.py --expert_style {other} --out {out}")


@torch.no_grad()
def expert_logprob(model, tok, problems):
    """Mean log-prob per token of the problems' expert solutions (and end of text) under model:
    how likely the demonstrations are for it (SFT weighs each token by 1/p)."""
    dev = next(model.parameters()).device
    b = gft.flatten_groups(expert_groups(tok, problems), tok.pad_id)
    tokens, mask = b.tokens.to(dev), b.resp_mask.to(dev)
    with autocast(dev):
        lp, _ = model.token_logprobs(tokens, mask, with_entropy=False)
    return float(lp[mask[:, 1:]].mean())


def main(argv=None):
    cfg = parse_args(argv)
    if cfg.mode == "demo":
        return demo(cfg)
    try:
        r = run(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if cfg.mode == "eval" and r:
        print(json.dumps(r, indent=1))  # eval's result in full, for scripts
    return r


def cli():
    """main, with a bad input (setting, file, checkpoint, data) ending in one line on stderr and
    exit code 1 instead of a traceback, and Ctrl-C in one line and exit code 130; GFT_DEBUG=1
    shows the traceback."""
    try:
        main()
    except (ValueError, OSError, RuntimeError, FloatingPointError) as e:
        if os.environ.get("GFT_DEBUG") == "1":
            raise
        sys.exit(f"error: {' '.join(str(e).split())}")
    except KeyboardInterrupt:  # Ctrl-C: what was kept, and how to go on, instead of a traceback
        if os.environ.get("GFT_DEBUG") == "1":
            raise
        print("interrupted (Ctrl-C): a training run keeps the last checkpoint it wrote in --out (one every "
              "--ckpt_every steps; the steps since are lost); the same command with --resume true continues from "
              "it, or starts afresh if none was written yet", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
