"""Does the base model land in its band for every seed? Pretrain one base per seed and tabulate.

    python experiments/base_seeds.py --seeds 1-10 --threads 1 --jobs 2     # the gated recipe
    python experiments/base_seeds.py --seeds 1-10 --recipe fixed1500       # the old one, for comparison
    python experiments/base_seeds.py --seeds 1-3 --train_args "--base_mix 2:.25,3:.4,4:.15,5:.15,6:.05 --ood_ops 6"
    python experiments/base_seeds.py --summary results/base_seeds/gate_cpu_t2.jsonl   # reprint a sweep's summary

Each seed is a plain `python train.py pretrain --seed S ...` subprocess with OMP_NUM_THREADS set
to --threads, --jobs at a time. Its final evaluation (held-out greedy accuracy, pass@1 at T=1
from 16 samples of 64 problems) is read from its metrics.jsonl. Recipes:
    gate        train.py's defaults: constant lr after warm-up, stop once val pass@1 >= --gate_pass1
    fixed1500   the recipe before the gate: 1500 steps, cosine decay, no gate
Prints one row per seed and a summary (medians and min..max over seeds); appends each row, as its
seed ends, to --out/<recipe>_<device>_t<threads>.jsonl. --summary FILE reprints the rows and the
summary of such a file without training anything.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the core files live one folder up
sys.path.insert(0, ROOT)
from train import BASE_BAND, base_band_problem  # noqa: E402

RECIPES = {"gate": [], "fixed1500": ["--steps", "1500", "--schedule", "cosine", "--gate_pass1", "0"]}


def seeds_arg(text):
    """'1-10' or '1,4,7' -> list of ints."""
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",")]


def one_seed(seed, a):
    out = os.path.join(a.work, f"{a.recipe}_{a.device}_t{a.threads}_s{seed}")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "pretrain", "--out", out, "--seed", str(seed),
           "--device", a.device, "--log_every", "250", "--overwrite", "true", *RECIPES[a.recipe], *shlex.split(a.train_args)]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads), PYTHONUNBUFFERED="1")
    t0 = time.time()
    with open(out + ".log", "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(f"seed {seed} failed ({p.returncode}); see {out}.log")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        fin = [json.loads(l)["final"] for l in f if '"final"' in l][-1]
    row = dict(recipe=a.recipe, device=a.device, threads=a.threads, seed=seed, steps=fin["step"], wall_s=round(wall, 1),
               acc_test=fin["acc_test"], pass1=fin["pass@1"], acc_ood=fin["acc_ood"], acc_probe=fin["acc_probe"],
               gate=fin.get("gate"), in_band=not base_band_problem(fin))
    with open(os.path.join(a.out, f"{a.recipe}_{a.device}_t{a.threads}.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")  # one line as soon as a seed ends: an interrupted sweep keeps its rows
    print(row_line(row), flush=True)
    return row


def row_line(row):
    return (f"seed {row['seed']:3d} | steps {row['steps']:5d} | {row['wall_s'] / 60:5.1f} min | greedy "
            f"{row['acc_test']:.3f} | pass@1 {row['pass1']:.3f} | ood {row['acc_ood']:.3f} | probe "
            f"{row['acc_probe']:.3f} | {'in band' if row['in_band'] else 'MISSES the band'}")


def summary(rows):
    """The sweep's one-line summary: seeds in the band, and medians with min..max over seeds (the README's
    base-model table reports these)."""
    med = lambda k: statistics.median(r[k] for r in rows)
    rng = lambda k: f"{min(r[k] for r in rows):.3f}..{max(r[k] for r in rows):.3f}"
    return (f"{sum(r['in_band'] for r in rows)}/{len(rows)} seeds in the band | median greedy {med('acc_test'):.3f} "
            f"(range {rng('acc_test')}) | median pass@1 {med('pass1'):.3f} (range {rng('pass1')}) | "
            f"median wall {med('wall_s') / 60:.1f} min (range {min(r['wall_s'] for r in rows) / 60:.1f}.."
            f"{max(r['wall_s'] for r in rows) / 60:.1f}) | median steps {med('steps'):.0f} "
            f"(range {min(r['steps'] for r in rows)}..{max(r['steps'] for r in rows)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=seeds_arg, default=seeds_arg("1-10"), help="'1-10' or '1,4,7'")
    ap.add_argument("--recipe", default="gate", choices=sorted(RECIPES))
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per run")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--device", default="cpu", help="train.py --device")
    ap.add_argument("--train_args", default="", help="more train.py pretrain settings, e.g. '--base_mix ...'")
    ap.add_argument("--work", default=os.path.join(ROOT, "out", "base_seeds"), help="run folders")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "base_seeds"), help="where the rows go")
    ap.add_argument("--summary", default="", metavar="FILE",
                    help="only print the rows and summary of a finished sweep's jsonl (no training)")
    a = ap.parse_args()
    if a.summary:
        with open(a.summary) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        for row in rows:
            print(row_line(row))
        print(summary(rows))
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if not 1 <= a.threads <= cores:  # torch runs min(OMP_NUM_THREADS, cores): the rows would name threads never run
        ap.error(f"--threads must be in [1, {cores}] (this machine's cores), got {a.threads}")
    os.makedirs(a.work, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    print(f"base_seeds: recipe {a.recipe} {a.train_args}, seeds {a.seeds}, {a.threads} thread(s) x {a.jobs} job(s) "
          f"on {a.device}; "
          f"band: held-out pass@1 in {list(BASE_BAND)}", flush=True)
    with ThreadPoolExecutor(a.jobs) as ex:
        rows = list(ex.map(lambda s: one_seed(s, a), a.seeds))
    print(summary(rows))


if __name__ == "__main__":
    main()
