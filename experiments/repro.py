"""Reproduce the paper's claims in miniature: every row, several seeds, one command.

    python experiments/repro.py            # full: 3 seeds, about an hour on 2 CPU cores
    python experiments/repro.py --quick    # every regime in one pass: 1 seed, 30-step runs, no lr sweep

--quick runs Table 1 and Table 2 below (the control regime), then part 2's off-policy and
knowledge regimes on the same base (experiments/regimes.py --quick, written to <out>/regimes/);
the Fig. 4 pipelines and Fig. 6 sweeps are the full run's only. Part 2's full protocol (three
bases, lr grids, tau on val) is experiments/regimes.py on its own (docs/results.md).

Each seed s has its own base model, pretrained with seed 1337 + s until train.py's gate is met,
and every method of seed s starts from it, so the spread over seeds includes the base's. A
base outside the band GFT needs stops the reproduction. Every fine-tuning run
gets the same budget: STEPS optimiser steps of the same number of trained sequences
(P prompts x K = 8 responses for group methods; P x 8 expert demonstrations for SFT and
DFT), the same learning rate, the same prompt pool and the same evaluation. Runs are plain
`python train.py ...` subprocesses, JOBS at a time with one thread each (on 2 cores two
one-thread processes train ~1.7x faster than one two-thread process; a single base, as in
--quick, pretrains alone with JOBS threads). Writes to --out:
    results.md      the tables (mean and spread over seeds; spread = min..max)
    runs.jsonl      one line per run: its row, seed, command, wall time and final metrics
    curves.jsonl    the logged training curves of the seed-0 runs
    *.png           figures, if matplotlib is installed (optional; the table never needs it)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the core files live one folder up
sys.path.insert(0, ROOT)
from train import MODE_DEFAULTS, base_band_problem, load_checkpoint  # noqa: E402


# --------------------------------------------------------------------------- the recipe
# Fixed once for every method, before comparing them (docs/results.md says why).
P = 16            # prompts per step; K = 8 responses each (paper: 1 expert + 3 teacher + 4 rollouts)
LRS = (3e-5, 1e-4, 3e-4)  # each method's lr: the best of these by greedy accuracy on the val split
EVAL = ["--eval_n", "200", "--passk_problems", "64", "--passk_n", "16", "--kl_n", "64"]
QUICK_EVAL = ["--eval_n", "100", "--passk_problems", "32", "--passk_n", "16", "--kl_n", "32"]


def rows(steps, n_prompts):
    """name -> (init row or 'base', train.py arguments). Init rows run first."""
    common = ["--steps", str(steps), "--n_prompts", str(n_prompts), "--log_every", "10",
              "--eval_every", str(max(10, steps // 5)), "--ckpt_every", str(steps)]
    sft = ["sft", "--batch_size", str(8 * P)]
    group = ["--prompts_per_step", str(P)]
    gft = ["gft", *group, "--n_expert", "1", "--n_teacher", "3", "--n_rollout", "4", "--tau", "0.7"]
    grpo = ["grpo", *group, "--n_rollout", "8"]
    def with_(args, **kv):  # replace flag values in a copy of args
        args = list(args)
        for k, v in kv.items():
            args[args.index(f"--{k}") + 1] = str(v)
        return args
    r = {
        # Table 1
        "SFT (10x prompts)": ("base", [*sft, *common] + ["--n_prompts", str(10 * n_prompts)]),
        "SFT": ("base", [*sft, *common]),
        "DFT": ("base", ["dft", "--batch_size", str(8 * P), *common]),
        "GFT": ("base", [*gft, *common]),
        "GFT (no mix)": ("base", [*with_(gft, n_teacher=0, n_rollout=7), *common]),
        "GRPO": ("base", [*grpo, *common]),
        # Table 2 / Fig. 3 ablations
        "GFT w/o GAL": ("base", ["gft", "--prompts_per_step", str(8 * P), "--n_expert", "1", "--n_teacher", "0",
                                 "--n_rollout", "0", "--tau", "0.7", *common]),  # groups of one expert: A = 1
        "GFT w/o DCR": ("base", [*with_(gft, tau=0.0), *common]),
        # Fig. 4 pipelines (same GRPO budget after each)
        "SFT -> GRPO": ("SFT", [*grpo, *common]),
        "GFT -> GRPO": ("GFT", [*grpo, *common]),
        "SFT -> GFT": ("SFT", [*gft, *common]),
        "SFT -> GFT -> GRPO": ("SFT -> GFT", [*grpo, *common]),
    }
    # Fig. 6 sweeps (one seed): tau, and demonstrations : samples
    for tau in (0.1, 0.3, 0.5, 1.0):
        r[f"tau {tau}"] = ("base", [*with_(gft, tau=tau), *common])
    for demos, samples in ((2, 6), (6, 2)):  # 1:7 is "GFT (no mix)", 4:4 is "GFT"
        r[f"demos:samples {demos}:{samples}"] = ("base", [*with_(gft, n_teacher=demos - 1, n_rollout=samples), *common])
    return r


SWEEP_ONLY = lambda name: name.startswith(("tau ", "demos:samples"))
FULL_ONLY = lambda name: SWEEP_ONLY(name) or "->" in name  # not in --quick: Fig. 4 pipelines, Fig. 6 sweeps
QUICK_REGIMES = "off-policy,knowledge"  # part 2 in --quick; its control is Table 1 here
TABLES = {
    "Table 1: methods (paper Table 1)": ["base", "SFT (10x prompts)", "SFT", "DFT", "GFT", "GFT (no mix)", "GRPO"],
    "Table 2: ablations (paper Table 2 / Fig. 3)": ["GFT", "GFT w/o GAL", "GFT w/o DCR"],
    "Fig. 4: pipelines, same GRPO budget after each": ["GRPO", "SFT -> GRPO", "GFT -> GRPO", "SFT -> GFT", "SFT -> GFT -> GRPO"],
    "Fig. 6: tau sweep (seed 0)": ["GFT w/o DCR", "tau 0.1", "tau 0.3", "tau 0.5", "GFT", "tau 1.0"],
    "Fig. 6: demonstrations : samples (seed 0)": ["GFT (no mix)", "demos:samples 2:6", "GFT", "demos:samples 6:2"],
}
COLS = ["acc_test", "acc_ood", "acc_probe", "acc_easy", "pass@1", "pass@16", "pass@1_strict", "paths", "entropy", "kl_base"]


def slug(name):
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def finished(out):
    """Whether a train.py output folder holds a final evaluation."""
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return any('"final"' in line for line in f)


def launch(cmd, log, threads=1):
    """Run one train.py command; return its wall time in seconds. A run whose output folder
    already holds a final evaluation is not run again (so an interrupted repro continues)."""
    out = cmd[cmd.index("--out") + 1]
    if cmd[0] != "eval" and finished(out):
        with open(log) as f:
            done = [l for l in f if l.startswith("wall ")]
        return float(done[-1].split()[1]) if done else 0.0
    if cmd[0] != "eval" and "--resume" not in cmd:  # an unfinished run starts again in its folder, as it was
        cmd = [*cmd, "--overwrite", "true"]
    t0 = time.time()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    with open(log, "w") as f:
        p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *cmd], stdout=f, stderr=subprocess.STDOUT,
                           env=env, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"run failed ({p.returncode}): train.py {' '.join(cmd)}; see {log}")
    with open(log, "a") as f:
        f.write(f"wall {time.time() - t0:.1f} s\n")
    return time.time() - t0


def final_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        lines = [json.loads(l) for l in f]
    finals = [l["final"] for l in lines if "final" in l]
    if not finals:
        raise RuntimeError(f"{out}/metrics.jsonl has no final evaluation")
    return finals[-1], [l for l in lines if "step" in l and "final" not in l]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every regime in one pass: 1 seed, 30-step runs, Tables 1-2 "
                    "and part 2's off-policy and knowledge regimes (no pipelines, sweeps or lr grid)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds for Table 1, Table 2 and Fig. 4 rows")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    ap.add_argument("--out", default="", help="output folder (default results/ or results/quick/)")
    ap.add_argument("--base_steps", type=int, default=0, help="cap on pretraining steps (0 = train.py's default)")
    ap.add_argument("--device", default="auto", help="train.py --device for every run (auto: cuda if present)")
    ap.add_argument("--steps", type=int, default=0, help="fine-tuning steps per run (0 = recipe default)")
    a = ap.parse_args()
    seeds = 1 if a.quick else a.seeds
    steps = a.steps or (30 if a.quick else 80)
    base_steps = a.base_steps or MODE_DEFAULTS["pretrain"]["steps"]
    out = a.out or os.path.join(ROOT, "results", "quick" if a.quick else "")
    if a.jobs < 1 or seeds < 1 or steps < 1:
        raise SystemExit("--jobs, --seeds and --steps must be >= 1")
    ev_args = QUICK_EVAL if a.quick else EVAL
    os.makedirs(out, exist_ok=True)
    runs_dir = os.path.join(out, "runs")
    t_start = time.time()
    print(f"repro: {'quick' if a.quick else 'full'}; {seeds} seed(s), {steps} steps per run, {a.jobs} jobs; "
          f"writing {out}", flush=True)

    dev = ["--device", a.device]

    # 1. one base model per seed, pretrained until the gate is met (reused if already finished)
    def base_job(seed):
        base_dir = os.path.join(runs_dir, f"base_s{seed}")
        cmd = ["pretrain", "--out", base_dir, "--seed", str(1337 + seed), "--steps", str(base_steps),
               "--log_every", "250", "--ckpt_every", "500", "--resume", "true", *dev, *ev_args]
        threads = max(1, a.jobs // seeds)  # one base alone (--quick) gets every job's thread
        t = launch(cmd, os.path.join(out, f"base_s{seed}.log"), threads) if not _finished(base_dir) else 0.0
        ck = os.path.join(base_dir, "ckpt.pt")
        ev = os.path.join(runs_dir, f"base_eval_s{seed}")
        launch(["eval", "--init", ck, "--out", ev, "--seed", "0", *dev, *ev_args], ev + ".log")
        m = final_metrics(ev)[0]
        print(f"base (seed {seed}): pretrained in {t:.0f}s, {m['step']} steps | acc {m['acc_test']:.3f} | "
              f"pass@1 {m['pass@1']:.3f}", flush=True)
        return dict(row="base", seed=seed, wall_s=t, metrics=m), ck

    with ThreadPoolExecutor(a.jobs) as ex:
        bases = list(ex.map(base_job, range(seeds)))
    records = [rec for rec, _ in bases]
    misses = [f"seed {r['seed']}: {base_band_problem(r['metrics'])}" for r in records if base_band_problem(r["metrics"])]
    if misses:
        raise SystemExit("error: base model(s) outside the band GFT needs, so the comparison would mean nothing:\n  "
                         + "\n  ".join(misses))
    base_ckpt = bases[0][1]  # seed 0's base: the lr sweep and Table 4 start from it

    # 2. learning rates: for each method, the best of LRS by greedy accuracy on the val split
    #    (seed 0, the full step budget); every row of that method uses it
    recipe = rows(steps, P * steps)
    methods = {"sft": "SFT", "dft": "DFT", "gft": "GFT", "grpo": "GRPO"}
    sweep = [(mode, lr) for mode in methods for lr in LRS]

    def sweep_job(item):
        mode, lr = item
        run_out = os.path.join(runs_dir, f"lr_{mode}_{lr:g}")
        cmd = [*recipe[methods[mode]][1], "--init", base_ckpt, "--out", run_out, "--seed", "0", "--lr", str(lr),
               "--eval_split", "val", "--eval_n", "200", "--passk_problems", "8", "--passk_n", "2", "--kl_n", "8",
               "--eval_every", "0", *dev]
        t = launch(cmd, run_out + ".log")
        acc = final_metrics(run_out)[0]["acc_test"]
        print(f"lr sweep {mode} {lr:g}: val acc {acc:.3f} ({t:.0f}s)", flush=True)
        return dict(row=f"lr sweep: {mode}", lr=lr, seed=0, wall_s=t, metrics={"acc_val": acc})

    if a.quick:  # no sweep: the rates the full run's sweep chose, kept in train.py's MODE_DEFAULTS
        sweep_records, lrs = [], {m: MODE_DEFAULTS[m]["lr"] for m in methods}
    else:
        with ThreadPoolExecutor(a.jobs) as ex:
            sweep_records = list(ex.map(sweep_job, sweep))
        lrs = {m: max((r for r in sweep_records if r["row"] == f"lr sweep: {m}"), key=lambda r: r["metrics"]["acc_val"])["lr"]
               for m in methods}
    print(f"chosen learning rates: {lrs}", flush=True)

    # 3. every row, in waves: a row starts once the row it starts from has finished
    done = {("base", s): ck for s, (_, ck) in enumerate(bases)}
    pending = [(name, s) for name in recipe if not (a.quick and FULL_ONLY(name))
               for s in range(1 if SWEEP_ONLY(name) else seeds)]
    while pending:
        wave = [(n, s) for n, s in pending if (recipe[n][0], s) in done or recipe[n][0] == "base"]
        pending = [x for x in pending if x not in wave]

        def job(item):
            name, seed = item
            run_out = os.path.join(runs_dir, f"{slug(name)}_s{seed}")
            args = recipe[name][1]
            cmd = [*args, "--lr", str(lrs[args[0]]), "--init", done[(recipe[name][0], seed)], "--out", run_out,
                   "--seed", str(seed), *dev, *ev_args]
            t = launch(cmd, run_out + ".log")
            fin, curve = final_metrics(run_out)
            print(f"{name} (seed {seed}): {t:.0f}s | acc {fin['acc_test']:.3f} | ood {fin['acc_ood']:.3f} | "
                  f"probe {fin['acc_probe']:.3f} | pass@16 {fin['pass@16']:.3f} | kl {fin['kl_base']:.4f}", flush=True)
            return dict(row=name, seed=seed, wall_s=t, command="python train.py " + " ".join(cmd),
                        metrics=fin, curve=curve), os.path.join(run_out, "ckpt.pt")

        with ThreadPoolExecutor(a.jobs) as ex:
            for (name, seed), (rec, ckpt) in zip(wave, ex.map(job, wave)):
                records.append(rec)
                done[(name, seed)] = ckpt
        if not wave:
            raise RuntimeError(f"rows whose init never finished: {pending}")

    # 4. pass@k for k = 1..64 (Table 4): 64 samples per problem from the seed-0 checkpoints
    passk = {}
    for name in ("base", "SFT", "GRPO", "GFT"):
        ck = base_ckpt if name == "base" else done[(name, 0)]
        ev = os.path.join(runs_dir, f"passk_{slug(name)}")
        t = launch(["eval", "--init", ck, "--out", ev, "--seed", "0", *dev,
                    "--eval_n", "16", "--passk_problems", "16",  # 16 held-out problems (the committed tables')
                    "--passk_n", "16" if a.quick else "64", "--kl_n", "8"], ev + ".log")
        passk[name] = {k: v for k, v in final_metrics(ev)[0].items() if k.startswith("pass@")}
        print(f"pass@k {name}: {t:.0f}s", flush=True)

    # 5. --quick: part 2's other regimes on the same base, so one command shows every regime
    if a.quick:
        cmd = [sys.executable, os.path.join(ROOT, "experiments", "regimes.py"), "--quick", "--bases", base_ckpt,
               "--regimes", QUICK_REGIMES, "--steps", str(steps), "--jobs", str(a.jobs), "--device", a.device,
               "--out", os.path.join(out, "regimes")]
        print(f"part 2 ({QUICK_REGIMES}): {' '.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            raise SystemExit("error: part 2 (experiments/regimes.py --quick) failed; its log is above")

    total = time.time() - t_start
    with open(os.path.join(out, "runs.jsonl"), "w") as f:
        for r in sweep_records + records:
            f.write(json.dumps({k: v for k, v in r.items() if k != "curve"}) + "\n")
    with open(os.path.join(out, "curves.jsonl"), "w") as f:
        for r in records:
            if r.get("curve") and r["seed"] == 0:
                f.write(json.dumps({"row": r["row"], "curve": r["curve"]}) + "\n")
    md = report(records, passk, seeds, steps, total, a.quick, sweep_records, lrs)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    figures(records, passk, out)
    print(f"repro finished in {total / 60:.1f} min; wrote {out}")


def _finished(run_dir):
    """A base whose pretraining ended (gate met or cap reached): its checkpoint says so."""
    p = os.path.join(run_dir, "ckpt.pt")
    return os.path.exists(p) and bool(load_checkpoint(p).get("finished"))


def report(records, passk, seeds, steps, total, quick, sweep_records, lrs):
    by = {}
    for r in records:
        by.setdefault(r["row"], []).append(r)
    lines = [f"# Results: GFT in miniature ({'quick' if quick else 'full'} run)", "",
             "One base model per seed, pretrained until train.py's gate was met (steps: " +
             ", ".join(str(r["metrics"]["step"]) for r in records if r["row"] == "base") +
             f"), then {steps} optimiser steps per run, "
             f"{P} prompts x 8 responses per step (SFT/DFT: {8 * P} demonstrations per step). "
             f"Cells: mean over {seeds} seed(s), spread = min..max over seeds. Wall time: {total / 60:.1f} min.", "",
             ("Learning rates: train.py's MODE_DEFAULTS (see its comment for the sweep that chose them): " +
              ", ".join(f"{m} {lr:g}" for m, lr in lrs.items()) + "." if not sweep_records else
              "Learning rate per method: the best of " + ", ".join(f"{x:g}" for x in LRS) + " by greedy accuracy on "
             "the val split (seed 0): " + "; ".join(
                 f"{m} " + " / ".join(f"{r['lr']:g}: {r['metrics']['acc_val']:.3f}" for r in sweep_records
                                       if r["row"] == f"lr sweep: {m}") + f" -> {lrs[m]:g}" for m in lrs) + "."), ""]
    for title, names in TABLES.items():
        if quick and any(FULL_ONLY(n) for n in names):  # a figure of pipelines or sweeps
            lines += [f"## {title}", "", "Full run only (`python experiments/repro.py`).", ""]
            continue
        lines += [f"## {title}", "", "| row | " + " | ".join(COLS) + " | wall s |", "|---" * (len(COLS) + 2) + "|"]
        for n in names:
            rs = by.get(n, [])
            if not rs:
                continue
            cells = []
            for c in COLS:
                vals = [r["metrics"][c] for r in rs if c in r["metrics"]]
                if not vals:
                    cells.append("-")
                elif len(vals) == 1:
                    cells.append(f"{vals[0]:.3f}")
                else:
                    cells.append(f"{statistics.mean(vals):.3f} ({min(vals):.3f}..{max(vals):.3f})")
            wall = statistics.mean(r["wall_s"] for r in rs)
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {wall:.0f} |")
        lines.append("")
    ks = sorted({int(k.split("@")[1]) for v in passk.values() for k in v if k.count("@") == 1 and "strict" not in k})
    if quick:
        lines += ["## Part 2: the off-policy and knowledge regimes", "",
                  f"On the same base, {steps} steps per run: `regimes/results.md` beside this file "
                  "(experiments/regimes.py --quick; the control regime is Table 1 above).", ""]
    lines += [f"## Table 4: pass@k from {max(ks, default=0)} samples per problem (seed 0, 16 held-out problems)", "",
              "| model | " + " | ".join(f"pass@{k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for name, v in passk.items():
        lines.append(f"| {name} | " + " | ".join(f"{v.get(f'pass@{k}', float('nan')):.3f}" for k in ks) + " |")
    return "\n".join(lines) + "\n"


def figures(records, passk, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: figures skipped (the tables above are complete)")
        return
    curves = {r["row"]: r["curve"] for r in records if r["seed"] == 0 and r.get("curve")}
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for ax, key, label in zip(axes, ["acc_test", "entropy", "grad_norm", "kl_base"],
                              ["held-out greedy accuracy", "entropy of the batch", "grad norm", "KL(base || model)"]):
        for row in ("SFT", "DFT", "GFT", "GFT w/o GAL", "GFT w/o DCR", "GRPO"):
            pts = [(c["step"], c[key]) for c in curves.get(row, []) if key in c]
            if pts:
                ax.plot(*zip(*pts), label=row, marker="o" if key in ("acc_test", "kl_base") else None, ms=3)
        ax.set_title(label)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=90)
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, v in passk.items():
        ks = sorted(int(k.split("@")[1]) for k in v if "strict" not in k)
        ax.plot(ks, [v[f"pass@{k}"] for k in ks], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (held-out)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "passk.png"), dpi=90)
    print(f"figures: {out}/curves.png, {out}/passk.png")


if __name__ == "__main__":
    main()
