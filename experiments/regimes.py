"""Reproduction, part 2: the paper's comparisons where its premise holds, beside the control.

    python experiments/regimes.py                          # 3 new gated bases, then every regime (142.9 min
                                                           # measured on 2 cores, from a fresh clone)
    python experiments/regimes.py --bases a/ckpt.pt b/ckpt.pt c/ckpt.pt   # reuse gated bases (99 min here, 22 runs reused)
    python experiments/regimes.py --quick                  # 1 base, 30-step runs, no lr grid
    python experiments/regimes.py --regimes knowledge      # some regimes (finished training runs are reused)
    python experiments/regimes.py --grid full --out DIR    # every rate of LRS_FULL for every method (no bracketing)
    python experiments/regimes.py --val_bases 3            # rates and tau by the mean val accuracy of 3 bases
    python experiments/regimes.py --base_mix 2:0.25,3:0.40,4:0.15,5:0.15,6:0.05 --ood_ops 6   # bases that
                                                           # start 6-operand sums; OOD at 6 (README "Results")
    python experiments/regimes.py --bases S1 S2 S3 --train_ops 6 --ood_ops 7 --max_new_tokens 96   # fine-tune
                                                           # and test on 6-operand sums, where those bases are weak

Three regimes, each one or two settings of train.py (README "Three regimes"):
    control     the expert writes running sums, as pretraining did: on-policy for the base
    off-policy  the expert writes tree sums (data.py:tree_sum), never seen in pretraining
    knowledge   3-digit operands, never seen in pretraining: the base solves none (pass@16 0),
                so only the expert and the teachers are ever right
In order:
    1. the premise: experiments/premise.py measures, under each base, how unlikely each expert
       is (its verdict rule was fixed before any method was compared)
    2. learning rates: per method and regime, the best of LRS by greedy accuracy on the val split
       (base 0; --val_bases N: the mean over N bases), the grid extended once past an end that wins
       (--grid full: every rate of LRS_FULL)
    3. GFT's tau among 0.1 / 0.5 / 0.7 (the authors' own choices) on val, the same bases, at GFT's rate
    4. every row on every base at its rate (GFT at its tau), on the test, ood, probe and easy splits
    5. pass@k on the ood split of the bases and every row's final model (not in --quick)
GRPO never sees the expert, so one run serves every regime on the same problems. Verdicts follow
the rule written in README "Three regimes" before these runs: a difference counts when every base
agrees in sign and its mean exceeds the larger of the two rows' ranges over bases.
Writes to --out (default results/regimes/): results.md, runs.jsonl, premise.md and the runs.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from repro import P, final_metrics, finished, launch, slug  # noqa: E402  (experiments/repro.py)
from train import MODE_DEFAULTS, base_band_problem  # noqa: E402

REGIMES = {  # name -> train.py settings
    "control": ["--expert_style", "chain"],
    "off-policy": ["--expert_style", "tree"],
    "knowledge": ["--expert_style", "chain", "--digits", "3", "--max_new_tokens", "72"],  # 5 x 999 needs 65 tokens
}


def task_of(regime):
    """The regime's settings that change the problems (not the expert's style): GRPO and the base's
    evaluation depend on these only."""
    flags = REGIMES[regime]
    return tuple(x for i, x in enumerate(flags) if "--expert_style" not in (flags[i], flags[i - 1] if i else ""))


LRS = (1e-5, 1e-4, 3e-4)  # each method's grid, per regime; extended once past an end that wins (EXTEND)
EXTEND = {1e-5: 1e-6, 3e-4: 1e-3}
LRS_FULL = (1e-6, 1e-5, 1e-4, 3e-4, 1e-3)  # --grid full: every rate for every method, no extension (SFT's
# accuracy on the tree expert has two optima in rate, and the bracketing grid finds whichever its first
# winner points to: docs/results.md "Replication")
TAUS = (0.1, 0.5, 0.7)
EVAL = ["--eval_n", "1000", "--passk_problems", "64", "--passk_n", "64", "--kl_n", "64"]  # standard error <= 0.016
# step 5 samples only; its greedy splits and KL are already measured, so eval_n and kl_n are kept small
OOD_PASSK = ["--passk_split", "ood", "--passk_problems", "64", "--passk_n", "64", "--eval_n", "64", "--kl_n", "8"]
QUICK_EVAL = ["--eval_n", "200", "--passk_problems", "32", "--passk_n", "16", "--kl_n", "32"]
COLS = ["acc_test", "acc_last2", "acc_ood", "acc_probe", "acc_easy", "pass@1", "pass@16", "pass@64", "pass@1_strict",
        "paths", "kl_base", "kl_base_samples", "ood_pass@1", "ood_pass@16", "ood_pass@64"]


def rows(steps, n_prompts):
    """name -> train.py arguments (the expert style is added per regime). Every row: STEPS steps of
    8 * P trained sequences, from the same pool of n_prompts prompts (SFT (10x): ten times more)."""
    common = ["--steps", str(steps), "--n_prompts", str(n_prompts), "--log_every", "10",
              "--eval_every", str(max(10, steps // 4)), "--ckpt_every", str(steps)]
    sft = ["sft", "--batch_size", str(8 * P), *common]
    gft = ["gft", "--prompts_per_step", str(P), "--n_expert", "1", "--n_teacher", "3", "--n_rollout", "4", *common]
    return {
        "SFT": sft,
        "SFT (10x prompts)": [*sft, "--n_prompts", str(10 * n_prompts)],  # 10x distinct demonstrations
        "SFT (mix)": [*sft, "--sft_teachers", "3"],  # expert + 3 correct teacher solutions per prompt
        "DFT": ["dft", *sft[1:]],
        "GFT": [*gft, "--tau", "0.7"],
        # the official scripts' optimiser: AdamW betas (0.9, 0.999), weight decay 0.01, constant lr without
        # warm-up, 4 updates per rollout batch (so 4x the updates of "GFT" from the same rollouts)
        "GFT (official optimiser)": [*gft, "--tau", "0.7", "--adam_beta2", "0.999", "--weight_decay", "0.01",
                                     "--schedule", "constant", "--warmup", "0", "--updates_per_batch", "4"],
        "GRPO": ["grpo", "--prompts_per_step", str(P), "--n_rollout", "8", *common],
    }


LR_OF = {"SFT": "SFT", "SFT (10x prompts)": "SFT", "SFT (mix)": "SFT (mix)", "DFT": "DFT", "GFT": "GFT",
         "GFT (official optimiser)": "GFT", "GRPO": "GRPO"}
GRID = ("SFT", "SFT (mix)", "DFT", "GFT", "GRPO")  # the methods whose rate is chosen; SFT (10x) takes SFT's
ROW_ORDER = ["base", *LR_OF]  # the figures' order and colours


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 base, 30-step runs; no lr grid (train.py's MODE_DEFAULTS "
                    "rates) and tau 0.7")
    ap.add_argument("--bases", nargs="*", default=[], help="gated base checkpoints to reuse (else pretrain --seeds)")
    ap.add_argument("--seeds", type=int, default=3, help="bases to pretrain when --bases is not given")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    ap.add_argument("--steps", type=int, default=0, help="fine-tuning steps per run (0: 80, quick 30)")
    ap.add_argument("--regimes", default=",".join(REGIMES), help="comma-separated, of: " + ", ".join(REGIMES))
    ap.add_argument("--grid", default="bracket", choices=("bracket", "full"),
                    help="learning-rate grid: bracket = LRS extended once past a winning end (the registered "
                    "protocol); full = every rate of LRS_FULL for every method")
    ap.add_argument("--val_bases", type=int, default=1, help="bases whose val runs choose each rate and tau, by "
                    "their mean val accuracy (1: base 0 only, the registered protocol; a rate chosen on one base "
                    "may not transfer: docs/results.md \"Full grid\")")
    ap.add_argument("--train_ops", type=int, default=4, help="operands of the fine-tuning, val and held-out sums "
                    "(train.py --train_ops); the bases' band is checked at 4, where their gate is")
    ap.add_argument("--ood_ops", type=int, default=5, help="operands of the OOD split (train.py --ood_ops)")
    ap.add_argument("--max_new_tokens", type=int, default=0, help="every run's rollout budget (train.py "
                    "--max_new_tokens; 7-operand sums need 74); 0: each regime's own (64; knowledge 72)")
    ap.add_argument("--base_mix", default="", help="the new bases' pretraining mix (train.py --base_mix); "
                    "unset: data.TaskConfig's")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="", help="output folder (default results/regimes/ or results/regimes_quick/)")
    ap.add_argument("--figures", default="", metavar="DIR",
                    help="only draw the figures of a finished run from DIR/runs.jsonl (needs matplotlib)")
    a = ap.parse_args()
    if a.figures:
        if not os.path.exists(os.path.join(a.figures, "runs.jsonl")):
            raise SystemExit(f"--figures {a.figures}: no runs.jsonl there (the output folder of a finished run)")
        if not figures(a.figures):
            raise SystemExit("--figures: matplotlib is not installed (pip install matplotlib)")
        return
    regimes = a.regimes.split(",")
    for r in regimes:
        if r not in REGIMES:
            raise SystemExit(f"--regimes: unknown regime {r!r}; allowed: {', '.join(REGIMES)}")
    steps = a.steps or (30 if a.quick else 80)
    if a.jobs < 1 or a.seeds < 1 or steps < 1:
        raise SystemExit(f"--jobs ({a.jobs}), --seeds ({a.seeds}) and --steps ({steps}) must be >= 1")
    if a.val_bases < 1 or a.val_bases > (len(a.bases) or a.seeds):
        raise SystemExit(f"--val_bases {a.val_bases}: choose 1 to the number of bases ({len(a.bases) or a.seeds})")
    val_bases = range(a.val_bases)
    out = a.out or os.path.join(ROOT, "results", "regimes_quick" if a.quick else "regimes")
    runs_dir = os.path.join(out, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    ev_args = QUICK_EVAL if a.quick else EVAL
    if a.base_mix and a.bases:
        raise SystemExit("--base_mix is how new bases are pretrained: it cannot apply to the given --bases")
    run_flags = ["--device", a.device, "--ood_ops", str(a.ood_ops),  # every train.py run takes these (after
                 *(["--max_new_tokens", str(a.max_new_tokens)] if a.max_new_tokens else [])]  # its regime's)
    if a.train_ops != 4:  # the fine-tuning size is part of every regime's problems (task_of), so the band
        for r in REGIMES:  # check, on the bases' own 4-operand task (), is a separate evaluation
            REGIMES[r] = REGIMES[r] + ["--train_ops", str(a.train_ops)]
    t0 = time.time()

    # 0. the bases: given, or pretrained until the gate is met; each must be in the band
    bases = list(a.bases)
    if not bases:
        def pretrain(seed):
            d = os.path.join(runs_dir, f"base_s{seed}")
            launch(["pretrain", "--out", d, "--seed", str(1337 + seed), "--log_every", "250", "--ckpt_every", "500",
                    "--resume", "true", *run_flags, *(["--base_mix", a.base_mix] if a.base_mix else [])], d + ".log")
            return os.path.join(d, "ckpt.pt")
        with ThreadPoolExecutor(a.jobs) as ex:
            bases = list(ex.map(pretrain, range(1 if a.quick else a.seeds)))
    if a.quick:
        bases = bases[:1]

    owner = {task_of(r): r for r in reversed(regimes)}  # a task's first regime runs its GRPO and base evaluation
    tasks = sorted(set(owner) | {()})  # pretraining's own task always: the band is checked on it

    def name_of(task):  # a task's name in run folders ("both": control and off-policy share the built-in one)
        return slug(owner[task]) if task else "both"

    def base_eval(job):  # the base on each regime's problems
        task, i = job
        ev = os.path.join(runs_dir, f"base_eval_{name_of(task) + '_' if task else ''}{i}")
        launch(["eval", "--init", bases[i], "--out", ev, "--seed", "0", *task, *run_flags, *ev_args], ev + ".log")
        return final_metrics(ev)[0]
    jobs = [(t, i) for t in tasks for i in range(len(bases))]
    with ThreadPoolExecutor(a.jobs) as ex:
        base_m = dict(zip(jobs, ex.map(base_eval, jobs)))
    misses = [f"{b}: {base_band_problem(base_m[((), i)])}" for i, b in enumerate(bases)
              if ((), i) in base_m and base_band_problem(base_m[((), i)])]  # the band is pretraining's own task
    if misses:
        raise SystemExit("error: base(s) outside the band GFT needs:\n  " + "\n  ".join(misses))
    records = [dict(regime=r, row="base", base=i, metrics=dict(base_m[(task_of(r), i)],
                                                               acc_last2=base_m[(task_of(r), i)]["acc_test"]), wall_s=0.0)
               for r in regimes for i in range(len(bases))]

    # 1. the premise, per base and expert style, before any comparison
    for task in owner:
        styles = sorted({REGIMES[r][1] for r in regimes if task_of(r) == task})
        digits = task[task.index("--digits") + 1] if "--digits" in task else "2"
        subprocess.run([sys.executable, os.path.join(HERE, "premise.py"), "--init", *bases, "--out", out, "--styles",
                        ",".join(styles), "--digits", digits, "--train_ops", str(a.train_ops), "--max_new_tokens",
                        str(a.max_new_tokens), "--device", a.device], check=True,
                       env=dict(os.environ, OMP_NUM_THREADS="2"))
    recipe = rows(steps, P * steps)

    def shared(name, regime):  # a GRPO run of another regime on the same problems serves this one
        return name == "GRPO" and owner[task_of(regime)] != regime

    def run_one(name, regime, base_i, lr, tau=None, val=False):
        """One train.py run of a row: tau None = the recipe's (0.7); val = judged on the val split."""
        args = recipe[name] + (["--tau", str(tau)] if tau is not None else [])
        flags, reg_slug = REGIMES[regime], slug(regime)
        if args[0] == "grpo":  # GRPO never reads the expert: one run per task
            flags, reg_slug = ["--expert_style", "chain", *task_of(regime)], name_of(task_of(regime))
        tag = f" tau {tau}" if tau is not None else ""
        run_out = os.path.join(runs_dir, f"{reg_slug}_{slug(name + tag)}_b{base_i}_lr{lr:g}{'_val' if val else ''}")
        evs = ["--eval_split", "val", "--eval_n", "200", "--passk_problems", "8", "--passk_n", "2", "--kl_n", "8",
               "--eval_every", "0"] if val else ev_args
        cmd = [*args, *flags, "--lr", str(lr), "--init", bases[base_i], "--out", run_out, "--seed", str(base_i),
               *run_flags, *evs]
        t = launch(cmd, run_out + ".log")
        fin, curve = final_metrics(run_out)
        if fin["step"] != steps:  # launch reuses a finished run: it must be one of this many steps
            raise SystemExit(f"{run_out} holds a run of {fin['step']} steps, not {steps}: use another --out")
        # the mean of the last two evaluations (the last step's is the final one, not in the curve)
        fin["acc_last2"] = statistics.fmean([c["acc_test"] for c in curve if "acc_test" in c][-1:] + [fin["acc_test"]])
        print(f"{regime} | {name}{tag} | base {base_i} | lr {lr:g}{' (val)' if val else ''}: {t:.0f}s | "
              f"acc {fin['acc_test']:.3f} | probe {fin.get('acc_probe', float('nan')):.3f} | "
              f"kl {fin['kl_base']:.4f}", flush=True)
        return dict(regime=regime, row=name + (tag if val else ""), base=base_i, lr=lr, tau=tau, wall_s=t, out=run_out,
                    command="python train.py " + " ".join(cmd), metrics=fin, curve=curve)

    def pool(jobs):
        """[(row, regime, base, lr, keywords)] -> records, JOBS at a time. A GRPO run serves every regime of
        its task: it runs for the task's first regime and its record is copied to the others."""
        with ThreadPoolExecutor(a.jobs) as ex:
            recs = list(ex.map(lambda j: run_one(*j[:4], **j[4]), [j for j in jobs if not shared(j[0], j[1])]))
        return recs + [dict(x, regime=r) for x in recs for r in regimes
                       if shared(x["row"], r) and owner[task_of(r)] == x["regime"]]

    def best(recs, key):  # the lr / tau with the highest val accuracy, mean over the val bases (the smaller on a tie)
        acc = {}
        for x in recs:
            acc.setdefault(x[key], []).append(x["metrics"]["acc_test"])
        return max(sorted(acc), key=lambda v: statistics.fmean(acc[v]))

    # 2. learning rates on val (base 0, or the mean over --val_bases), per regime and method; a grid whose
    #    best is at an end is extended once past that end (EXTEND), so that the choice is bracketed
    lrs = {(r, n): MODE_DEFAULTS[recipe[n][0]]["lr"] for r in regimes for n in GRID}
    sweep = []
    if not a.quick:
        grid = LRS_FULL if a.grid == "full" else LRS
        sweep = pool([(n, r, i, lr, dict(val=True)) for n in GRID for r in regimes for lr in grid for i in val_bases])
        more = []
        for r in regimes:
            for n in GRID:
                top = best([x for x in sweep if x["row"] == n and x["regime"] == r], "lr")
                if a.grid == "bracket" and top in EXTEND:
                    more.append((n, r, EXTEND[top]))
        sweep += pool([(n, r, i, lr, dict(val=True)) for n, r, lr in more for i in val_bases])
        for r in regimes:
            for n in GRID:
                lrs[(r, n)] = best([x for x in sweep if x["row"] == n and x["regime"] == r], "lr")
    print("learning rates: " + ", ".join(f"{r}/{n} {v:g}" for (r, n), v in sorted(lrs.items())), flush=True)

    # 3. GFT's tau on val (base 0, or the mean over --val_bases), at GFT's rate: the grid's run is tau 0.7
    taus, tau_of = [], {r: 0.7 for r in regimes}
    if not a.quick:
        taus = pool([("GFT", r, i, lrs[(r, "GFT")], dict(tau=t, val=True)) for r in regimes for t in TAUS if t != 0.7
                     for i in val_bases])
        taus += [dict(x, row="GFT tau 0.7", tau=0.7) for x in sweep
                 if x["row"] == "GFT" and x["lr"] == lrs[(x["regime"], "GFT")]]
        tau_of = {r: best([x for x in taus if x["regime"] == r], "tau") for r in regimes}
    print("tau: " + ", ".join(f"{r} {t}" for r, t in tau_of.items()), flush=True)

    # 4. every row on every base at its method's rate (GFT at its tau)
    records += pool([(n, r, i, lrs[(r, LR_OF[n])], dict(tau=tau_of[r] if LR_OF[n] == "GFT" and tau_of[r] != 0.7 else None))
                     for r in regimes for n in recipe for i in range(len(bases))
                     if not (a.quick and n == "SFT (10x prompts)")])

    # 5. pass@k on the OOD split (--ood_ops operands, 5 by default) of the bases and every row's final model:
    #    at 4 operands held-out pass@64 is 0.95-1.00 for every base, so there pass@k can only show a method
    #    narrowing the base (at --train_ops 6 on S1-S3 it is 0.64-0.83); on OOD the bases' pass@16 is 0.7-0.9
    #    (README "Results"). Sampling only: the greedy splits are measured above.
    def ood_dir(x):  # a row's is named after its run folder; a GRPO run shared by two regimes is evaluated once
        return (os.path.join(runs_dir, f"base_oodk_{name_of(task_of(x['regime']))}_{x['base']}")
                if x["row"] == "base" else x["out"] + "_oodk")

    def ood_passk(x):
        ev = ood_dir(x)
        init = bases[x["base"]] if x["row"] == "base" else os.path.join(x["out"], "ckpt.pt")
        # reused only if newer than the checkpoint it measured; a base is always measured anew (step 0's
        # rule: another --bases may sit at the same index)
        if x["row"] == "base" or not finished(ev) or \
                os.path.getmtime(os.path.join(ev, "metrics.jsonl")) < os.path.getmtime(init):
            launch(["eval", "--init", init, "--out", ev, "--seed", "0", *task_of(x["regime"]), *run_flags, *OOD_PASSK],
                   ev + ".log")
        m = final_metrics(ev)[0]
        return {f"ood_{k}": m[k] for k in ("pass@1", "pass@16", "pass@64")}
    if not a.quick:
        todo = {ood_dir(x): x for x in records}
        with ThreadPoolExecutor(a.jobs) as ex:
            got = dict(zip(todo, ex.map(ood_passk, todo.values())))
        for x in records:
            x["metrics"].update(got[ood_dir(x)])
    records += taus
    total = time.time() - t0
    with open(os.path.join(out, "runs.jsonl"), "w") as f:
        for x in sweep + records:
            f.write(json.dumps({k: v for k, v in x.items() if k != "curve"}) + "\n")
    with open(os.path.join(out, "curves.jsonl"), "w") as f:  # every row's evaluations during training
        for x in records:
            if x.get("curve") and not is_val(x):
                f.write(json.dumps({k: x[k] for k in ("regime", "row", "base", "lr", "curve")}) + "\n")
    md = report(records, sweep, lrs, tau_of, bases, steps, total, a.quick, regimes, a.grid)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    figures(out)
    print(f"regimes finished in {total / 60:.1f} min; wrote {out}")


# ----------------------------------------------------------------------------- figures (optional)

def is_val(run):
    """A learning-rate or tau run, judged on the val split (not a row of the tables)."""
    return "--eval_split val" in run.get("command", "")


def figures(out):
    """PNGs from out/runs.jsonl (and out/curves.jsonl where present), one column per regime:
    figures_curves.png  held-out greedy accuracy over training, each row on base 0
    figures_passk.png   pass@k, k = 1..64 (1..16 in a quick run), each row's mean over bases
    figures_acc_kl.png  accuracy against KL(base || model) and against both probes' accuracy: every row on
                        every base (filled; test split) and every learning-rate / tau run (hollow;
                        val split), so "forgets less" can be told from "moved less"
    Needs matplotlib (optional: the tables in results.md never do)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: figures skipped (results.md is complete without them)")
        return []
    runs = [json.loads(line) for line in open(os.path.join(out, "runs.jsonl"))]
    cpath = os.path.join(out, "curves.jsonl")
    curves = [json.loads(line) for line in open(cpath)] if os.path.exists(cpath) else []
    regimes = [r for r in REGIMES if any(x["regime"] == r for x in runs)]
    names = sorted({x["row"] for x in runs if x["row"] in ROW_ORDER}, key=ROW_ORDER.index)
    colour = {n: f"C{i}" for i, n in enumerate(ROW_ORDER)}
    made = []

    def grid(title, n_rows=1):
        fig, axes = plt.subplots(n_rows, len(regimes), figsize=(max(8, 5 * len(regimes)), 4 * n_rows), squeeze=False)
        fig.suptitle(title)
        return fig, axes

    def save(fig, axes, name, legend=True):
        if legend:
            axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=90)
        plt.close(fig)
        made.append(os.path.join(out, name))

    if curves:
        fig, axes = grid("held-out greedy accuracy during training (base 0)")
        for ax, r in zip(axes[0], regimes):
            base = [x["metrics"]["acc_test"] for x in runs if x["regime"] == r and x["row"] == "base" and x["base"] == 0]
            for c in curves:
                if c["regime"] != r or c["base"] != 0:
                    continue
                fin = [x["metrics"] for x in runs if x["regime"] == r and x["row"] == c["row"] and x["base"] == 0
                       and x.get("lr") == c["lr"] and not is_val(x)]
                pts = [(0, base[0])] if base else []  # the base, then the evaluations, then the final one
                pts += [(p["step"], p["acc_test"]) for p in c["curve"] if "acc_test" in p]
                pts += [(fin[-1]["step"], fin[-1]["acc_test"])] if fin else []
                ax.plot(*zip(*pts), marker="o", ms=3, label=c["row"], color=colour.get(c["row"]))
            ax.set_title(r)
            ax.set_xlabel("step")
            ax.set_ylabel("accuracy")
        save(fig, axes, "figures_curves.png")

    fig, axes = grid("pass@k on held-out problems (mean over bases)")
    for ax, r in zip(axes[0], regimes):
        for n in names:
            ms = [x["metrics"] for x in runs if x["regime"] == r and x["row"] == n and not is_val(x)]
            ks = sorted({int(k[5:]) for m in ms for k in m if k.startswith("pass@") and k[5:].isdigit()})
            if ms and ks:
                ax.plot(ks, [statistics.fmean(m.get(f"pass@{k}", float("nan")) for m in ms) for k in ks],
                        marker="o", ms=3, label=n, color=colour[n])
        ax.set_xscale("log", base=2)
        ax.set_title(r)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k")
    save(fig, axes, "figures_passk.png")

    xlabel = {"kl_base": "KL(base || model)", "acc_probe": "probe accuracy (differences)",
              "acc_easy": "easy probe accuracy (2-operand sums)"}
    fig, axes = grid("accuracy against KL(base || model) and against the two forgetting probes' accuracy", len(xlabel))
    for j, r in enumerate(regimes):
        for i, key in enumerate(xlabel):
            ax = axes[i][j]
            for x in runs:
                n = x["row"].split(" tau ")[0]
                if x["regime"] != r or n not in colour or key not in x["metrics"]:
                    continue
                val = is_val(x)
                ax.scatter(x["metrics"][key], x["metrics"]["acc_test"], s=18, color=colour[n],
                           facecolors="none" if val else colour[n], label=None if val else n)
            handles = dict(zip(*ax.get_legend_handles_labels()[::-1]))  # one legend entry per row
            ax.legend(handles.values(), handles.keys(), fontsize=6)
            ax.set_title(r)
            ax.set_xlabel(xlabel[key])
            ax.set_ylabel("accuracy (filled: test; hollow: val)")
    save(fig, axes, "figures_acc_kl.png", legend=False)  # each panel has its own legend
    print("figures: " + ", ".join(made))
    return made


def cell(vals, f=".3f"):
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:{f}}"
    return f"{statistics.mean(vals):{f}} ({min(vals):{f}}..{max(vals):{f}})"


def verdict(a, b, key):
    """The pre-registered rule (README "Three regimes"): row a beats row b on key when every base
    agrees in sign and the mean difference exceeds the larger of the two rows' ranges over bases."""
    if not a or not b:
        return "n/a (row missing)"
    if any(key not in x["metrics"] for x in a + b):  # e.g. pass@64 in a quick run, which samples 16
        return f"n/a (no {key})"
    pairs = {x["base"]: x["metrics"][key] for x in a}, {x["base"]: x["metrics"][key] for x in b}
    common = sorted(set(pairs[0]) & set(pairs[1]))
    if len(common) < 2:
        return "n/a (one base)"
    d = [pairs[0][i] - pairs[1][i] for i in common]
    spread = max(max(p.values()) - min(p.values()) for p in pairs)
    if all(x > 0 for x in d) and statistics.mean(d) > spread:
        return "higher"
    if all(x < 0 for x in d) and -statistics.mean(d) > spread:
        return "lower"
    return "no call"


CLAIMS = [  # (row, than row, metric, the paper's prediction)
    ("GFT", "SFT", "acc_test", "higher"),
    ("GFT", "SFT (10x prompts)", "acc_test", "higher"),
    ("GFT", "SFT (mix)", "acc_test", "higher"),
    ("GFT", "DFT", "acc_test", "higher"),
    ("GFT", "GRPO", "acc_test", "higher"),
    ("GFT", "SFT", "acc_ood", "higher"),
    ("GFT", "SFT", "acc_probe", "higher"),
    ("GFT", "SFT", "acc_easy", "higher"),
    ("GFT", "SFT", "kl_base", "lower"),
    ("GFT", "SFT", "kl_base_samples", "lower"),
    ("GFT", "SFT", "pass@16", "higher"),
    ("GFT", "SFT", "pass@64", "higher"),
    ("GFT", "SFT", "paths", "higher"),
    ("GFT", "SFT", "ood_pass@16", "higher"),
    ("GFT", "SFT", "ood_pass@64", "higher"),
    ("GFT", "GRPO", "ood_pass@64", "higher"),
]


def report(records, sweep, lrs, tau_of, bases, steps, total, quick, regimes, grid_kind="bracket"):
    vb = sorted({x["base"] for x in sweep}) or [0]  # the bases whose val runs chose the rates and tau
    on = "base 0" if len(vb) == 1 else "mean over bases " + ", ".join(map(str, vb))

    def val_mean(xs, key="acc_test"):
        return statistics.fmean(x["metrics"][key] for x in xs)
    grid_text = (", ".join(f"{x:g}" for x in LRS) + ", extended past a winning end" if grid_kind == "bracket"
                 else ", ".join(f"{x:g}" for x in LRS_FULL) + " for every method")
    lines = ["# Reproduction part 2: " + " / ".join(regimes) + f" ({'quick' if quick else 'full'} run)", "",
             f"{len(bases)} gated base(s): " + ", ".join(bases) + f". {steps} optimiser steps per run, {8 * P} "
             f"sequences per step. Cells: mean over bases (min..max). acc_last2: mean greedy test accuracy of the "
             f"last two evaluations. Wall time {total / 60:.1f} min.", "",
             "Premise (experiments/premise.py, the rule in its `verdict`): see premise.md beside this file.", "",
             ("Learning rates: train.py's MODE_DEFAULTS (quick run, no grid): " if quick else
              f"Learning rates (best on val, {on}, of " + grid_text + "; SFT (10x prompts) takes SFT's): ")
             + "; ".join(f"{r} {n} {v:g}" for (r, n), v in sorted(lrs.items())) + ".", ""]
    if sweep:
        grid = sorted({x["lr"] for x in sweep})
        lines += [f"Val greedy accuracy (KL(base || model) on 8+8 anchors) per rate, {on}; - = not run:", "",
                  "| regime | method | " + " | ".join(f"lr {x:g}" for x in grid) + " |", "|---" * (len(grid) + 2) + "|"]
        for r in regimes:
            for n in GRID:
                vals = {}
                for x in sweep:
                    if x["row"] == n and x["regime"] == r:
                        vals.setdefault(x["lr"], []).append(x)
                lines.append(f"| {r} | {n} | " + " | ".join(
                    f"{val_mean(vals[x]):.3f} ({val_mean(vals[x], 'kl_base'):.3f})" if x in vals else "-"
                    for x in grid) + " |")
        lines.append("")
    by = {}
    for x in records:
        by.setdefault((x["regime"], x["row"]), []).append(x)
    for r in regimes:
        lines += [f"## {r} ({' '.join(REGIMES[r])})", "", "| row | " + " | ".join(COLS) + " | wall s |",
                  "|---" * (len(COLS) + 2) + "|"]
        for n in ["base", *rows(1, 1)]:
            xs = by.get((r, n), [])
            if xs:
                lines.append(f"| {n} | " + " | ".join(cell([x["metrics"][c] for x in xs if c in x["metrics"]],
                                                          ".4f" if c.startswith("kl") else ".3f") for c in COLS) + f" | {statistics.mean(x['wall_s'] for x in xs):.0f} |")
        taus = [(t, by.get((r, f"GFT tau {t}"), [])) for t in TAUS]
        lines += ["", (f"GFT's tau on val ({on}): " + ", ".join(f"tau {t}: {val_mean(xs):.3f}"
                                                                for t, xs in taus if xs) + f"; the GFT row uses {tau_of[r]}")
                  if any(xs for _, xs in taus) else "GFT's tau: 0.7 (quick run: not chosen on val)", ""]
    lines += ["## The paper's claims, every regime, under the pre-registered rule", "",
              "| claim | paper | " + " | ".join(regimes) + " |", "|---" * (len(regimes) + 2) + "|"]
    for a_, b_, key, pred in CLAIMS:
        got = [verdict(by.get((r, a_), []), by.get((r, b_), []), key) for r in regimes]
        lines.append(f"| {a_} vs {b_}: {key} | {pred} | " + " | ".join(got) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
