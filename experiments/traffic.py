"""What a GPU step would cost, counted on a CPU: bytes moved and operations dispatched.

    python experiments/traffic.py                                   # this project's model.py
    python experiments/traffic.py --nanogpt .nanogpt/model.py --before .nanogpt/model_before.py

On a GPU, everything but the matrix multiplies and attention is bound by memory bandwidth, and a
one-token decode step by the number of kernels it launches. Both counts depend little on the
device, so a session without a GPU can still see what a change does to them (docs/performance.md, "Changes
after run 2"). A TorchDispatchMode sees every operation torch runs, forward and backward:

1. bytes per training step at GPT-2-small shape (12x12x768, block 1024, vocab 50304) under bf16
   autocast: inputs + outputs of every operation that is not a view, a matmul or attention.
   Counted at batches 1 and 2 and extended linearly to nanoGPT's batch 16 (b1 + 15 (b2 - b1)):
   some bytes do not grow with the batch (the weights' bf16 casts, the embedding's gradient).
   CPU autocast is not CUDA's (it casts the logits to float32 before a log-softmax, which CUDA
   reads in bf16; the attention kernels differ), so read the differences between models, not
   the totals.
2. operations dispatched in one fast-decode step (GPT.generate(fast=True)) of a 12-layer model
   under bf16 autocast: about one kernel each on a GPU, before any fusion.
"""
import argparse
import collections
import contextlib
import io
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import model as ours
from bench import GPT2, load_model_py

VIEWS = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "unsqueeze", "squeeze", "slice", "select",
         "unbind", "split", "split_with_sizes", "alias", "as_strided", "detach", "view_as_real", "view_as_complex",
         "_reshape_alias", "reshape", "empty", "empty_like", "empty_strided", "lift_fresh"}  # no data moved
MATMUL = {"mm", "addmm", "bmm", "matmul"}


class Tally(TorchDispatchMode):
    """Counts (and bytes in + out) per operation for everything run inside `with Tally() as t:`."""

    def __init__(self):
        super().__init__()
        self.calls, self.bytes = collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in VIEWS:
            tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
            self.calls[name] += 1
            self.bytes[name] += sum(t.numel() * t.element_size() for t in tensors)
        return out

    def other_bytes(self):
        """Bytes of every operation but matmuls and attention (the memory-bound rest)."""
        return sum(b for k, b in self.bytes.items() if k not in MATMUL and "attention" not in k)


def training_tally(module, batch, **cfg):
    """One forward + backward of module.GPT at GPT2 shape (cfg overrides), bf16 autocast."""
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # nanoGPT prints its parameter count
        m = module.GPT(module.GPTConfig(**{**GPT2, **cfg}))
    x, y = (torch.randint(0, GPT2["vocab_size"], (batch, GPT2["block_size"])) for _ in range(2))
    with Tally() as t:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = m(x, y)
        loss.backward()
    return t


def decode_tally(module):
    """The operations of one fast-decode step (the second token), 12 layers, batch 4, bf16 autocast."""
    torch.manual_seed(0)
    m = module.GPT(module.GPTConfig(n_layer=12, n_head=4, n_embd=64)).eval()
    step = m._logits
    tallies = []

    def counted(idx, *a, **k):  # _logits of a one-token step with a cache: the decode step
        if k.get("cache") is None or idx.size(1) != 1 or tallies:
            return step(idx, *a, **k)
        with Tally() as t:
            out = step(idx, *a, **k)
        tallies.append(t)
        return out
    m._logits = counted
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m.generate(torch.randint(0, 256, (4, 8)), 3, temperature=0, fast=True)
    return tallies[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", default="", help="path to karpathy/nanoGPT's model.py, counted beside ours")
    p.add_argument("--before", default="", help="an older model.py of this project, counted beside the current one")
    args = p.parse_args(argv)
    for name in ("nanogpt", "before"):
        if getattr(args, name) and not os.path.isfile(getattr(args, name)):
            raise SystemExit(f"--{name} {getattr(args, name)!r}: no such file (give the path to a model.py)")
    modules = {}
    if args.nanogpt:
        modules["nanoGPT"] = load_model_py(args.nanogpt, "nanogpt_model")
    if args.before:
        modules["before"] = load_model_py(args.before, "before_model")
    modules["ours"] = ours

    print("1. bytes per training step outside matmuls and attention, GPT-2-small shape, batch 16 (bf16 autocast)")
    gb = {}  # name -> GB at batch 16, from the counts at batches 1 and 2
    ops = {}
    for name, mod in modules.items():
        for label, cfg in ((name, {}), (f"{name} rope=False", dict(rope=False))):
            if name == "nanoGPT" and cfg:
                continue  # nanoGPT has learned positions only
            b1, b2 = (training_tally(mod, b, **cfg) for b in (1, 2))
            gb[label] = (b1.other_bytes() + 15 * (b2.other_bytes() - b1.other_bytes())) / 1e9
            ops[label] = sum(b1.calls.values())
    for name in gb:
        vs = f"  {gb[name] - gb['nanoGPT']:+6.2f} GB vs nanoGPT" if "nanoGPT" in gb else ""
        print(f"   {name:20s} {gb[name]:7.2f} GB in {ops[name]} operations{vs}")

    print("\n2. operations dispatched in one fast-decode step, 12 layers (bf16 autocast), most frequent first")
    for name, mod in modules.items():
        if name == "nanoGPT":
            continue  # nanoGPT has no KV cache
        t = decode_tally(mod)
        top = ", ".join(f"{k} {n}" for k, n in t.calls.most_common(8))
        print(f"   {name:8s} {sum(t.calls.values())}: {top}")


if __name__ == "__main__":
    main()
