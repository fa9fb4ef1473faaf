"""Reliability: bad input gets a clear error, a killed run loses nothing, and
training cannot quietly go wrong.

Catalogue of bad inputs. Every case is a test that checks the error type and that the message
names the problem. "here" = this file; the others are tests that existed before this file.

| case | error | test |
|---|---|---|
| **settings** | | |
| --tau above 1 | ValueError | test_train.py::test_out_of_range_setting_is_an_error_naming_setting_and_range[--tau-1.5-...] |
| --tau below 0 | ValueError | here: test_bad_setting_is_an_error_naming_it[tau below 0] |
| --tau nan | ValueError | here: test_bad_setting_is_an_error_naming_it[tau nan] |
| tau outside [0, 1] given to the loss | ValueError | test_gft.py::test_invalid_inputs_raise_value_error_naming_the_problem[tau must be in ...] (4 cases) |
| --lr negative (0 means the mode default) | ValueError | test_train.py::test_out_of_range_setting_...[--lr--1-...] |
| --lr above 1 | ValueError | here: ...[lr above 1] |
| --n_expert negative | ValueError | here: ...[n_expert negative] |
| --n_teacher negative | ValueError | here: ...[n_teacher negative] |
| --n_rollout below -1 (-1 = mode default) | ValueError | here: ...[n_rollout below -1] |
| group count negative or a bool given to gft | ValueError | test_gft.py::test_invalid_inputs_...[n_teacher must be an integer >= 0], [n_expert must be an integer >= 0, got True] |
| all group counts zero (gft) | ValueError | here: ...[all group counts zero]; test_gft.py::...[must be > 0] |
| grpo with one rollout (no advantage) | ValueError | here: ...[grpo one rollout] |
| a group with no responses (flatten_groups) | ValueError | test_gft.py::test_invalid_inputs_...[group 1 has no responses] |
| --batch_size 0 / negative | ValueError | here: ...[batch_size 0], ...[batch_size negative] |
| --prompts_per_step 0 | ValueError | test_train.py::test_out_of_range_setting_...[--prompts_per_step-0-...] |
| --steps negative | ValueError | here: ...[steps negative] |
| --ckpt_every 0 | ValueError | here: ...[ckpt_every 0] |
| --temperature below 0 | ValueError | test_train.py::test_out_of_range_setting_...[--temperature--0.5-...] |
| --temperature above 10 | ValueError | here: ...[temperature above 10] |
| --max_new_tokens >= --block_size | ValueError | here: ...[response budget fills the block] |
| --block_size below 16 | ValueError | here: ...[block_size too small] |
| --n_embd not divisible by --n_head | ValueError | here: ...[n_embd not divisible by n_head] |
| --agg not one of the aggregations | ValueError | here: ...[unknown agg] |
| --kl_beta / --grad_clip infinite | ValueError | here: ...[kl_beta inf], [grad_clip inf] |
| --resume and --overwrite together | ValueError | here: ...[resume and overwrite] |
| --eval_split val with --data (which has no val split) | ValueError | here: ...[eval_split val with data] |
| --data given to pretrain (which writes its own sums); --n_prompts / --teacher_error with --data (which brings its own) | ValueError | here: ...[pretrain with data], [n_prompts with data], [teacher_error with data] |
| a setting the mode does not read (sft --tau, gft --kl_beta, eval --lr, eval --compile, sft --fast_decode, pretrain --n_prompts, the demo given anything but its own) | ValueError | here: test_setting_is_an_error_in_a_mode_that_does_not_read_it (every READ_BY setting x 7 modes); that those modes indeed ignore them, and that the modes said to read a step's setting are changed by it: test_settings_a_mode_does_not_read_leave_its_step_unchanged, test_settings_a_mode_reads_change_its_loss |
| a pool smaller than a step's draw; --warmup >= --steps | (stderr warning) | here: test_settings_that_run_but_may_mislead_are_warned_about |
| unknown setting name | SystemExit | test_train.py::test_unknown_setting_is_an_error_naming_it |
| abbreviated setting name (--ta for --tau) | SystemExit | here: test_unknown_or_stray_argument_is_an_error_naming_it[abbreviation] |
| stray positional argument | SystemExit | here: test_unknown_or_stray_argument_...[stray positional] |
| --device that torch does not know (gpu) | ValueError | here: test_unknown_device_is_an_error_naming_it |
| Ctrl-C: one line on stderr saying how to go on, exit code 130, the checkpoint kept | (behaviour) | here: test_ctrl_c_is_one_line_on_stderr_saying_how_to_go_on_and_keeps_the_checkpoint |
| unknown mode (command line) | SystemExit, stderr | here: test_malformed_value_is_an_argparse_error_naming_it[unknown mode] |
| unknown mode (Config) | ValueError | here: test_unknown_mode_in_config_is_an_error_naming_the_choices |
| non-number for a number setting | SystemExit, stderr | here: test_malformed_value_...[not an int] |
| not true/false for a bool setting | SystemExit, stderr | here: test_malformed_value_...[not a bool] |
| fine-tune mode without --init | ValueError | here: test_finetune_mode_without_init_is_an_error[sft], [dft], [gft], [grpo], [eval] |
| unknown tokenizer name | ValueError | test_data.py::test_unknown_tokenizer_name_raises_value_error_naming_it; here (CLI): test_unknown_tokenizer_through_cli_is_an_error_naming_it |
| named tiktoken encoding not loadable offline | RuntimeError | test_data.py::test_tiktoken_encoding_that_cannot_load_offline_raises_runtime_error; here (CLI): test_tiktoken_encoding_offline_through_cli_is_an_error_saying_so |
| tokenizer whose vocabulary differs from --init's | ValueError | here: test_tokenizer_with_another_vocabulary_than_init_is_an_error |
| **data** | | |
| JSONL missing | FileNotFoundError | test_data.py::test_missing_jsonl_raises_file_not_found_naming_it |
| JSONL empty / whitespace only | ValueError | test_data.py::test_bad_jsonl_raises_naming_file_and_line[empty], [whitespace only] |
| malformed line / blank line / not an object | ValueError | test_data.py::test_bad_jsonl_...[malformed json], [blank line in the middle], [not an object] |
| missing field | ValueError | test_data.py::test_bad_jsonl_...[missing field] |
| wrong field type | ValueError | test_data.py::test_bad_jsonl_...[wrong type], [teachers not a list], [teachers not strings] |
| empty prompt | ValueError | test_data.py::test_bad_jsonl_...[empty prompt] |
| non-UTF-8 byte | ValueError | test_data.py::test_bad_jsonl_...[not utf-8] |
| file saved with a UTF-8 byte-order mark | ValueError | here: test_bad_data_file_through_cli_is_an_error_naming_it[byte-order mark] |
| --data is a folder | IsADirectoryError | here: test_bad_data_file_...[a folder] |
| --data with one record (no test split) | ValueError | here: test_bad_data_file_...[one record] |
| record longer than the block (never truncated) | ValueError | test_data.py::test_jsonl_record_longer_than_block_size_raises_instead_of_truncating |
| teacher solution longer than the block (checked on load, not at the step that draws it) | ValueError | test_data.py::test_jsonl_teacher_longer_than_block_size_raises_naming_it |
| --n_prompts more than the built-in task has at that difficulty: said after about a second, not minutes | ValueError | test_data.py::test_a_used_up_split_fails_after_few_draws_and_a_full_one_is_still_found |
| prompt alone longer than the block, via the CLI | ValueError | here: test_bad_data_file_...[prompt longer than the block] |
| prompt + --max_new_tokens longer than the block (check_fits) | ValueError | here: test_bad_data_file_...[prompt + response budget exceeds the block] |
| expert solution failing its verifier: reported with its line, kept | (stdout) | test_data.py::test_jsonl_expert_failing_verifier_is_reported_with_its_line_and_kept |
| **tensors given to gft.py** | | |
| logprobs / mask / advantages / old_logprobs shapes differ | ValueError | test_gft.py::test_invalid_inputs_...[gft_loss: logprobs shape ...], [advantages shape ...], [grpo_loss: old_logprobs shape ...], [mask shape (2, 2)] |
| ref_logprobs shape differs | ValueError | here: test_bad_tensor_is_an_error_naming_it[ref_logprobs shape] |
| advantages (N, 1) instead of (N,) | ValueError | here: ...[advantages (N, 1)] |
| full log-softmax (N, T, V) instead of chosen log-probs | ValueError | here: ...[logprobs (N, T, V)] |
| NaN / -inf log-probs | ValueError | test_gft.py::test_invalid_inputs_...[logprobs contain NaN or inf0], [...inf1] |
| +inf log-probs | ValueError | here: ...[+inf logprobs] |
| NaN / inf old or ref log-probs (grpo) | ValueError | here: ...[NaN old_logprobs]; test_gft.py::...[ref_logprobs contain NaN] |
| NaN log-probs given to dcr_stats | ValueError | here: ...[dcr_stats NaN] |
| NaN / inf advantages | ValueError | here: ...[NaN advantages]; test_gft.py::...[advantages contain NaN or inf] |
| NaN / -inf rewards | ValueError | test_gft.py::...[rewards contain NaN], [reward nan], [reward inf]; here: ...[-inf reward] |
| positive log-probs | ValueError | test_gft.py::...[logprobs must be <= 0]; here: ...[positive old_logprobs], test_positive_logprobs_are_accepted_within_rounding_and_rejected_beyond |
| all-masked batch | ValueError | test_gft.py::...[mask selects no response tokens], [dcr_stats: mask selects no]; here: ...[grpo all masked] |
| integer mask of 0/1: accepted, same as bool | (behaviour) | test_gft.py::test_mask_accepts_bool_and_01_numbers; here: test_integer_mask_gives_the_same_loss_and_gradient_as_bool |
| mask holding other values (2, -1, NaN) | ValueError | test_gft.py::...[mask must be bool or hold only 0/1]; here: ...[mask -1], [mask NaN] |
| NaN / inf beta given to grpo_loss | ValueError | test_gft.py::test_invalid_inputs_...[beta must be finite and >= 0, got nan], [..., got inf] |
| p_exp negative (summing to 1) or a support that is not (S,) (SFT identity) | ValueError | test_gft.py::test_invalid_inputs_...[p_exp must be a distribution], [seq_logprobs shape (2, 2) ...] |
| padding holding NaN, +-inf or positive values: accepted, counts for nothing | (behaviour) | test_gft.py::test_empty_rows_and_padding_contribute_nothing |
| **generation** | | |
| NaN / +inf logits, or a row all -inf, from the first token or a later one (eager cache, recompute, fast decode; greedy or sampled) | ValueError | test_model.py::test_generate_with_nonfinite_logits_raises_naming_the_rows (36 cases); -inf entries stay valid: test_minus_inf_logits_are_valid_and_never_sampled |
| temperature below 0, NaN or infinite; a temperature so small that logits / temperature overflow | ValueError | test_model.py::test_invalid_generate_settings_raise_naming_the_setting, test_nan_infinite_or_vanishing_temperature_is_an_error |
| top_k below 1 or not an int, max_new_tokens below 0 or not an int, eos_id / pad_id outside the vocabulary, idx not (B, T); prompt + max_new_tokens beyond the block | ValueError | test_model.py::test_invalid_generate_settings_raise_naming_the_setting, test_generate_longer_than_block_size_raises_naming_block_size |
| prompt rows that end in padding (right-padded or empty); a pad_mask that is not bool or not idx's shape | ValueError | test_model.py::test_prompts_that_end_in_padding_are_an_error_naming_the_rows, test_forward_with_a_non_bool_pad_mask_raises_naming_pad_mask |
| **checkpoints** | | |
| missing file (load, and --init on the CLI) | FileNotFoundError | here: test_missing_checkpoint_is_an_error_naming_it |
| a folder given as the checkpoint (--init out/base) | ValueError | here: test_checkpoint_path_that_is_a_folder_is_an_error_saying_so |
| truncated file (half its bytes) | ValueError | here: test_damaged_checkpoint_is_an_error_naming_it[truncated to half] |
| empty file | ValueError | here: ...[empty file] |
| corrupted: a flipped bit / zeroed bytes in a weight, garbage at the end | ValueError | here: ...[bit flipped in a weight], [bytes zeroed in a weight], [garbage at the end] |
| not a checkpoint: text, a dict without the keys, a bare tensor | ValueError | here: ...[text file], [dict without the keys], [bare tensor] |
| weights that do not match the stored model_config | ValueError | here: test_checkpoint_whose_weights_do_not_match_its_config_is_an_error[model_config says wider], [a weight missing] |
| --n_layer / --block_size that disagree with --init's | ValueError | here: test_model_setting_that_disagrees_with_init_is_an_error[n_layer], [block_size] |
| resuming with changed settings (error unless --override true) | ValueError | test_train.py::test_resume_with_changed_settings_is_an_error_unless_overridden |
| resuming an --out that holds another mode's run | ValueError | here: test_resume_into_another_modes_run_is_an_error_naming_the_mode |
| resuming from a damaged checkpoint | ValueError | here: test_resume_from_a_damaged_checkpoint_is_an_error_naming_it |
| resuming with a damaged line in metrics.jsonl | ValueError | here: test_damaged_log_line_is_an_error_naming_file_and_line |
| a new run (or eval) in an --out that holds a run, without --resume or --overwrite | ValueError | here: test_out_holding_a_run_is_refused_unless_resumed_or_overwritten; --overwrite removes the old checkpoint at once: test_overwrite_removes_the_old_checkpoint_before_the_first_step |
| --out that is a file | ValueError | here: test_out_that_is_a_file_is_an_error |
| a run folder moved or copied, then resumed: accepted | (behaviour) | here: test_a_run_folder_moved_elsewhere_resumes |

Faults, with real subprocesses (tests/_faulty_train.py patches a fault into train.py): SIGKILL inside a step
and while a checkpoint is half written, then --resume: same weights bitwise as an uninterrupted
run, every log line once. In process: a NaN loss or gradient stops the run naming the step and
the quantity, the last checkpoint byte-identical; --skip_nonfinite skips, counts and finishes.
Gradient explosion: on sharp logits, the ordering of SFT's and GFT's logit gradients that the math
guarantees (experiments/grad_explosion.py prints the figures for a fitted model).
"""
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import tiktoken
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import data as D
import gft
import train
from model import GPT, GPTConfig, pick_device
import _faulty_train  # tests/_faulty_train.py: conftest.py puts tests/ on sys.path
import test_train

real_train_step = train.train_step

TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "96"]
FAST = ["--eval_n", "4", "--passk_problems", "2", "--passk_n", "2", "--kl_n", "2", "--n_prompts", "32",
        "--log_every", "1", "--max_new_tokens", "48", "--device", "cpu"]  # CPU: bitwise-reproducible
PRETRAIN = ["pretrain", "--steps", "4", "--ckpt_every", "2", "--batch_size", "8", *TINY]
GFT = ["gft", "--steps", "4", "--ckpt_every", "2", "--prompts_per_step", "2", "--n_rollout", "2"]


def train_py(*args, fault=None):
    """`python train.py ARGS FAST` in a fresh process, one thread (bitwise-comparable runs); with
    fault=WHAT:N, tests/_faulty_train.py runs it with that fault patched in."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    script = [os.path.join(ROOT, "tests", "_faulty_train.py"), fault] if fault else [os.path.join(ROOT, "train.py")]
    return subprocess.run([sys.executable, *script, *args, *fast(args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


def ok(p):
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p


def ckpt(out):
    return train.load_checkpoint(os.path.join(out, "ckpt.pt"))


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny pretrained base, made by a subprocess so the killed pretrain run can be compared
    with it bitwise (same command, same thread count)."""
    out = str(tmp_path_factory.mktemp("base"))
    ok(train_py(*PRETRAIN, "--out", out))
    return os.path.join(out, "ckpt.pt")


@pytest.fixture(scope="module")
def gft_full(base, tmp_path_factory):
    """The uninterrupted gft run the killed ones must reproduce."""
    out = str(tmp_path_factory.mktemp("gft_full"))
    ok(train_py(*GFT, "--init", base, "--out", out))
    return out


def fast(args):
    """FAST for a command line args, less what its mode would refuse as unread (test_train.fast)."""
    return test_train.fast(args, FAST)


def main(*args):
    return train.main(list(args) + fast(args))



# ----------------------------------------------------------------------------- settings

SETTINGS = {  # id: (argv, pattern of the ValueError)
    "tau below 0": (["gft", "--init", "x.pt", "--tau", "-0.1"], r"--tau -0.1 is out of range \[0.0, 1.0\]"),
    "tau nan": (["gft", "--init", "x.pt", "--tau", "nan"], r"--tau nan is out of range \[0.0, 1.0\]"),
    "lr above 1": (["sft", "--init", "x.pt", "--lr", "2"], r"--lr 2.0 is out of range \[0.0, 1.0\]"),
    "n_expert negative": (["gft", "--init", "x.pt", "--n_expert", "-1"], r"--n_expert -1 is out of range \[0, inf\]"),
    "n_teacher negative": (["gft", "--init", "x.pt", "--n_teacher", "-1"], r"--n_teacher -1 is out of range \[0, inf\]"),
    "n_rollout below -1": (["gft", "--init", "x.pt", "--n_rollout", "-2"], r"--n_rollout -2 is out of range \[-1, inf\]"),
    "all group counts zero": (["gft", "--init", "x.pt", "--n_expert", "0", "--n_teacher", "0", "--n_rollout", "0"],
                              r"n_expert \+ n_teacher \+ n_rollout must be > 0, got 0 \(empty groups\)"),
    "grpo one rollout": (["grpo", "--init", "x.pt", "--n_rollout", "1"], r"--n_rollout must be >= 2 for grpo"),
    "batch_size 0": (["sft", "--init", "x.pt", "--batch_size", "0"], r"--batch_size 0 is out of range \[1, inf\]"),
    "batch_size negative": (["sft", "--init", "x.pt", "--batch_size", "-4"], r"--batch_size -4 is out of range"),
    "steps negative": (["sft", "--init", "x.pt", "--steps", "-1"], r"--steps -1 is out of range \[0, inf\]"),
    "ckpt_every 0": (["sft", "--init", "x.pt", "--ckpt_every", "0"], r"--ckpt_every 0 is out of range \[1, inf\]"),
    "temperature above 10": (["gft", "--init", "x.pt", "--temperature", "11"],
                             r"--temperature 11.0 is out of range \[0.0, 10.0\]"),
    "response budget fills the block": (["gft", "--init", "x.pt", "--max_new_tokens", "96", "--block_size", "96"],
                                        r"--max_new_tokens 96 must be < --block_size 96"),
    "block_size too small": (["pretrain", "--block_size", "8"], r"--block_size 8 is out of range \[16, 8192\]"),
    "n_embd not divisible by n_head": (["pretrain", "--n_embd", "30", "--n_head", "4"],
                                       r"--n_embd 30 must be divisible by --n_head 4"),
    "unknown agg": (["gft", "--init", "x.pt", "--agg", "mean"], r"--agg 'mean' is not allowed; choose one of .*token-mean"),
    "kl_beta inf": (["grpo", "--init", "x.pt", "--kl_beta", "inf"], r"--kl_beta inf must be a finite number"),
    "grad_clip inf": (["sft", "--init", "x.pt", "--grad_clip", "inf"], r"--grad_clip inf must be a finite number"),
    "resume and overwrite": (["sft", "--init", "x.pt", "--resume", "true", "--overwrite", "true"],
                             r"--resume true and --overwrite true contradict each other"),
    "eval_split val with data": (["eval", "--init", "x.pt", "--data", "d.jsonl", "--eval_split", "val"],
                                 r"--eval_split val: a --data file has a test split only"),
    "pretrain with data": (["pretrain", "--data", "d.jsonl"], r"--data d.jsonl: mode pretrain runs the built-in task"),
    "n_prompts with data": (["gft", "--init", "x.pt", "--data", "d.jsonl", "--n_prompts", "50"],
                            r"^--n_prompts 50: the size of the built-in task's pool"),
    "teacher_error with data": (["gft", "--init", "x.pt", "--data", "d.jsonl", "--teacher_error", "0.9"],
                                r"^--teacher_error 0.9: the size of the built-in task's pool and the rate"),
}


@pytest.mark.parametrize("case", SETTINGS)
def test_bad_setting_is_an_error_naming_it(case):
    argv, pattern = SETTINGS[case]
    with pytest.raises(ValueError, match=pattern):
        train.parse_args(argv)


OTHER_VALUE = {  # for each setting of train.READ_BY, a legal value that is no mode's default
    "steps": 7, "lr": 1e-4, "warmup": 3, "min_lr_ratio": 0.5, "schedule": "constant", "weight_decay": 0.01,
    "adam_beta2": 0.999, "grad_clip": 0.5, "skip_nonfinite": True, "data": os.path.join(ROOT, "data", "example.jsonl"),
    "expert_style": "tree", "prompts_per_step": 8, "n_rollout": 6, "temperature": 0.5, "adv_scale": False,
    "agg": "seq-mean-token-sum", "tau": 0.3, "n_expert": 2, "n_teacher": 2, "teacher_error": 0.5, "updates_per_batch": 2,
    "resume": True, "override": True, "overwrite": True, "kl_beta": 0.5, "batch_size": 16, "sft_teachers": 1,
    "base_mix": "2:1,3:1", "gate_pass1": 0.3, "gate_every": 10, "gate_n": 8, "compile": True, "log_every": 5,
    "eval_every": 5, "ckpt_every": 5, "n_prompts": 40, "fast_decode": True,
}


def test_every_mode_specific_setting_has_a_value_to_try():
    assert set(OTHER_VALUE) == set(train.READ_BY)


@pytest.mark.parametrize("setting", sorted(OTHER_VALUE))
def test_setting_is_an_error_in_a_mode_that_does_not_read_it(setting):
    """sft --tau 0.3 used to run, record tau 0.3 and train exactly as tau 0.7: a setting the mode does
    not read is an error naming it; in the modes that read it, it is accepted."""
    for mode in train.MODES:
        kw = {"mode": mode, setting: OTHER_VALUE[setting], **({} if mode in ("pretrain", "demo") else {"init": "x.pt"})}
        reads = setting in train.DEMO_READS if mode == "demo" else mode in train.READ_BY[setting]
        if reads:
            assert getattr(train.make_config(**kw), setting) == OTHER_VALUE[setting], mode
        else:
            with pytest.raises(ValueError, match=re.escape(f"--{setting} ")):
                train.make_config(**kw)


@pytest.mark.parametrize("mode", train.MODES)
def test_mode_help_names_its_defaults_and_every_setting_it_refuses(mode, capsys):
    """`python train.py sft --help` printed the same text as every other mode's, listing --tau as if sft
    took it; its epilog now says the mode's filled defaults and exactly the settings it refuses."""
    with pytest.raises(SystemExit):
        train.parse_args([mode, "--help"])
    epilog = " ".join(capsys.readouterr().out.split(f"mode {mode}: ")[1].split())
    named = set(re.findall(r"--(\w+)", epilog.split("It ")[1]))
    if mode == "demo":
        assert named == set(train.DEMO_READS[1:])
    else:
        assert named == {k for k, modes in train.READ_BY.items() if mode not in modes}
        assert f"--out out/{mode}" in epilog
    if mode in train.TRAINING:
        d = train.MODE_DEFAULTS[mode]
        assert f"--steps {d['steps']}," in epilog and f"--lr {d['lr']}," in epilog


def one_step(mode, monkeypatch):
    """(config, step): step(config) -> (loss, metrics) of one train_step of mode, on a tiny random
    model (and, for grpo's KL, another as the reference), the same every call. The verifier is
    replaced by one that alternates 1, 0, 1, ... over its calls in a step, so that every group (2 or more
    responses, scored one after another) is mixed and its advantages not all 0 whatever the rollouts
    drew. It passed texts of odd length, about half: on another seed grpo's 6 rollouts were all odd,
    the groups constant and the loss blind to --adv_scale."""
    calls = []  # this step's verifier calls

    def alternate(text, answer):
        calls.append(text)
        return float(len(calls) % 2)
    monkeypatch.setattr(D, "verify", alternate)
    size = dict(batch_size=4) if mode in ("pretrain", "sft", "dft") else dict(prompts_per_step=2, n_rollout=3)
    cfg = train.make_config(mode=mode, **({} if mode == "pretrain" else {"init": "x.pt", "n_prompts": 16}), eval_n=2,
                            passk_problems=1, kl_n=1, max_new_tokens=48, **size,
                            **({"kl_beta": 0.2} if mode == "grpo" else {}))
    tok = D.Tokenizer()
    torch.manual_seed(0)
    model, ref = (GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=32))
                  for _ in range(2))

    def step(c):
        calls.clear()  # each step scores the same way
        pool = train.load_problems(c, tok, 128)["train"]
        loss, m = train.train_step(model, train.LogProbs(model), tok, c, 3, pool, ref, 0, 1)
        return loss.item(), m
    return cfg, step


STEP_SETTINGS = ("data", "expert_style", "prompts_per_step", "n_rollout", "temperature", "adv_scale", "agg", "tau",
                 "n_expert", "n_teacher", "teacher_error", "kl_beta", "batch_size", "sft_teachers", "base_mix")


@pytest.mark.parametrize("mode", train.TRAINING)
def test_settings_a_mode_does_not_read_leave_its_step_unchanged(mode, monkeypatch):
    """The other half of READ_BY: what it says a mode does not read, the mode's step indeed ignores
    (the loss and every logged metric equal). Set past the check, which would refuse them."""
    cfg, step = one_step(mode, monkeypatch)
    want = step(cfg)
    if mode in ("gft", "grpo"):
        assert 0.0 < want[1]["reward"] < 1.0  # mixed groups
    unread = [k for k, modes in train.READ_BY.items() if mode not in modes]
    assert len([k for k in unread if k in STEP_SETTINGS]) >= 4  # gft reads the most: 4 are left
    for k in unread:
        assert step(dataclasses.replace(cfg, **{k: OTHER_VALUE[k]})) == want, k


@pytest.mark.parametrize("mode", train.TRAINING)
def test_settings_a_mode_reads_change_its_loss(mode, monkeypatch):
    """And what READ_BY says a mode reads within a step changes that step's loss (the settings of
    the loop, such as --lr and the gate, are read by code every mode shares). tau goes to 0 (C = 1
    everywhere): a random model's p is below 0.3 and 0.7 alike."""
    cfg, step = one_step(mode, monkeypatch)
    loss = step(cfg)[0]
    reads = [k for k in STEP_SETTINGS if mode in train.READ_BY[k]]
    assert len(reads) >= 2  # pretrain reads the fewest
    for k in reads:
        assert step(dataclasses.replace(cfg, **{k: 0.0 if k == "tau" else OTHER_VALUE[k]}))[0] != loss, k


@pytest.mark.parametrize("init", ["base", "gft"])
def test_grpo_kl_anchor_is_the_init_model_also_after_fine_tuning(init, base, gft_full, tmp_path, monkeypatch):
    """grpo --kl_beta penalises drift from --init (README, --help, verl's reference policy). After gft,
    --init's checkpoint also carries the pretrained base, which kl_base measures drift from: the
    penalty used to anchor to that base instead."""
    path = base if init == "base" else os.path.join(gft_full, "ckpt.pt")
    refs = []

    def spy(model, logprob_fn, tok, cfg, step, pool, ref_model, *rest):
        refs.append({k: v.clone() for k, v in ref_model.state_dict().items()})
        return real_train_step(model, logprob_fn, tok, cfg, step, pool, ref_model, *rest)
    monkeypatch.setattr(train, "train_step", spy)
    main("grpo", "--init", path, "--kl_beta", "0.1", "--steps", "1", "--prompts_per_step", "2", "--n_rollout", "2",
         "--out", str(tmp_path / "g"))
    assert len(refs) == 1 and same_weights(refs[0], train.load_checkpoint(path)["model"])
    assert not same_weights(train.load_checkpoint(base)["model"], ckpt(gft_full)["model"])  # the two can be told apart


def test_settings_that_run_but_may_mislead_are_warned_about(base, tmp_path, capsys):
    path = os.path.join(ROOT, "data", "example.jsonl")  # 50 records: 45 in the pool
    main("sft", "--init", base, "--data", path, "--batch_size", "64", "--steps", "2", "--out", str(tmp_path / "o"))
    err = capsys.readouterr().err
    assert "WARNING: a step draws 64 prompts from a pool of 45: more than it holds" in err
    assert "(lower --batch_size, or give more prompts)" in err  # the mode's own setting: gft refuses --batch_size
    train.warn_settings(train.make_config(mode="gft", init="x.pt", prompts_per_step=64), 45)
    assert "(lower --prompts_per_step, or give more prompts)" in capsys.readouterr().err
    assert "WARNING: --warmup 20 > --steps 2: the learning rate only reaches 3e-06 of --lr 3e-05" in err
    main("sft", "--init", base, "--data", path, "--batch_size", "8", "--steps", "2", "--warmup", "1",
         "--out", str(tmp_path / "p"))
    assert "WARNING" not in capsys.readouterr().err
    cfg = train.make_config(mode="sft", init="x.pt", steps=20, warmup=20)  # the last step reaches the peak
    train.warn_settings(cfg, pool=cfg.batch_size)  # a pool just large enough
    assert "WARNING" not in capsys.readouterr().err

@pytest.mark.parametrize("argv,pattern", [
    (["gft", "--init", "x.pt", "--ta", "0.5"], r"unknown setting\(s\) \['--ta', '0.5'\]"),
    (["gft", "--init", "x.pt", "extra"], r"unknown setting\(s\) \['extra'\]"),
], ids=["abbreviation", "stray positional"])
def test_unknown_or_stray_argument_is_an_error_naming_it(argv, pattern):
    with pytest.raises(SystemExit, match=pattern):
        train.parse_args(argv)


@pytest.mark.parametrize("argv,pattern", [
    (["finetune"], r"argument mode: invalid choice: 'finetune'"),
    (["sft", "--init", "x.pt", "--steps", "ten"], r"argument --steps: invalid int value: 'ten'"),
    (["sft", "--init", "x.pt", "--resume", "maybe"], r"argument --resume: expected true or false, got 'maybe'"),
], ids=["unknown mode", "not an int", "not a bool"])
def test_malformed_value_is_an_argparse_error_naming_it(argv, pattern, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(argv)
    assert e.value.code == 2  # argparse's usage error
    assert re.search(pattern, capsys.readouterr().err)


def test_unknown_mode_in_config_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match=r"--mode 'finetune' is not allowed; choose one of .*'gft'"):
        train.check_config(train.Config(mode="finetune"))


@pytest.mark.parametrize("mode", ["sft", "dft", "gft", "grpo", "eval"])
def test_finetune_mode_without_init_is_an_error(mode):
    with pytest.raises(ValueError, match=f"mode {mode} needs --init CHECKPOINT"):
        train.parse_args([mode])


def test_unknown_tokenizer_through_cli_is_an_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"unknown tokenizer 'nope'; allowed: 'bytes' or one of"):
        main("pretrain", "--tokenizer", "nope", "--out", str(tmp_path / "o"), *TINY)
    assert not (tmp_path / "o").exists()  # checked before anything is written


def test_tiktoken_encoding_offline_through_cli_is_an_error_saying_so(tmp_path, monkeypatch):
    def offline(name):  # never touch the network
        raise ConnectionError(f"could not reach the server for {name}")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(RuntimeError, match=r"tiktoken encoding 'gpt2' could not be loaded.*offline"):
        main("pretrain", "--tokenizer", "gpt2", "--out", str(tmp_path / "o"), *TINY)


def test_tokenizer_with_another_vocabulary_than_init_is_an_error(base, tmp_path, monkeypatch):
    def local_257(name):  # a local stand-in for a named encoding: 256 bytes + end token
        return tiktoken.Encoding(name=name, pat_str=r"\s+|\S+", mergeable_ranks={bytes([i]): i for i in range(256)},
                                 special_tokens={"<|endoftext|>": 256})

    monkeypatch.setattr(tiktoken, "get_encoding", local_257)
    with pytest.raises(ValueError, match=re.escape(base) + r" was trained with vocab_size 258, tokenizer 'gpt2' has 257"):
        main("sft", "--init", base, "--tokenizer", "gpt2", "--out", str(tmp_path / "o"), "--steps", "1")


# ----------------------------------------------------------------------------- data

GOOD = {"prompt": "Q:1+2=", "answer": "3", "expert": "1+2=3;#### 3", "teachers": []}
LONG_PROMPT = dict(GOOD, prompt="Q:" + "1+" * 60 + "2=")  # 123 tokens > block 96
TIGHT_PROMPT = dict(GOOD, prompt="Q:" + "1+" * 29 + "2=", expert="#### 3")  # 62 + 7 fit, 62 + 48 do not

DATA_FILES = {  # id: (file bytes or None for a folder, error type, pattern; PATH = the file)
    "byte-order mark": (b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n" + json.dumps(GOOD).encode() + b"\n",
                        ValueError, r"PATH:1: malformed JSON: Unexpected UTF-8 BOM"),
    "a folder": (None, IsADirectoryError, r"Is a directory: 'PATH'"),
    "one record": (json.dumps(GOOD).encode() + b"\n", ValueError, r"PATH: need at least 2 records \(train \+ test\), got 1"),
    "prompt longer than the block": ((json.dumps(GOOD) + "\n" + json.dumps(LONG_PROMPT) + "\n").encode(), ValueError,
                                     r"PATH:2: prompt \+ expert is 137 tokens, longer than block_size 96"),
    "prompt + response budget exceeds the block": (
        (json.dumps(GOOD) + "\n" + json.dumps(TIGHT_PROMPT) + "\n").encode(), ValueError,
        r"prompt 'Q:1\+1\+.*' \(62 tokens\) \+ max_new_tokens 48 = 110 > block_size 96"),
}


@pytest.mark.parametrize("case", DATA_FILES)
def test_bad_data_file_through_cli_is_an_error_naming_it(base, tmp_path, case):
    raw, exc, pattern = DATA_FILES[case]
    path = tmp_path / "d.jsonl"
    path.mkdir() if raw is None else path.write_bytes(raw)
    with pytest.raises(exc, match=pattern.replace("PATH", re.escape(str(path)))):
        main("gft", "--init", base, "--data", str(path), "--out", str(tmp_path / "o"), "--steps", "1")
    assert not (tmp_path / "o").exists()  # nothing trained, nothing written


# ----------------------------------------------------------------------------- tensors

lp46 = -torch.rand(4, 6, generator=torch.Generator().manual_seed(0))  # (N, T) log-probs
m46, A4 = torch.ones(4, 6, dtype=torch.bool), torch.ones(4)


def _with(t, idx, v):
    t = t.clone()
    t[idx] = v
    return t


TENSORS = {  # id: (call, pattern of the ValueError)
    "ref_logprobs shape": (lambda: gft.grpo_loss(lp46, lp46, A4, m46, ref_logprobs=lp46[:, :5], beta=0.1),
                           r"grpo_loss: ref_logprobs shape \(4, 5\) != mask shape \(4, 6\)"),
    "advantages (N, 1)": (lambda: gft.gft_loss(lp46, A4[:, None], m46, 0.5), r"advantages shape \(4, 1\) != \(4,\)"),
    "logprobs (N, T, V)": (lambda: gft.gft_loss(torch.full((4, 6, 5), -math.log(5)), A4, m46, 0.5),
                           r"gft_loss: logprobs must be \(N, T\), got shape \(4, 6, 5\)"),
    "+inf logprobs": (lambda: gft.gft_loss(_with(lp46, (2, 3), math.inf), A4, m46, 0.5),
                      "gft_loss: logprobs contain NaN or inf under the mask"),
    "NaN old_logprobs": (lambda: gft.grpo_loss(lp46, _with(lp46, (0, 1), math.nan), A4, m46),
                         "grpo_loss: old_logprobs contain NaN or inf"),
    "dcr_stats NaN": (lambda: gft.dcr_stats(_with(lp46, (3, 5), math.nan), m46, 0.5), "dcr_stats: logprobs contain NaN"),
    "NaN advantages": (lambda: gft.gft_loss(lp46, _with(A4, 1, math.nan), m46, 0.5), "advantages contain NaN or inf"),
    "-inf reward": (lambda: gft.group_advantages(_with(torch.zeros(2, 3), (0, 2), -math.inf)),
                    "group_advantages: rewards contain NaN or inf"),
    "positive old_logprobs": (lambda: gft.grpo_loss(lp46, _with(lp46, (1, 1), 0.3), A4, m46),
                              r"grpo_loss: old_logprobs must be <= 0 \(log-probabilities\), max is 0.3"),
    "grpo all masked": (lambda: gft.grpo_loss(lp46, lp46, A4, torch.zeros(4, 6, dtype=torch.bool)),
                        "grpo_loss: mask selects no response tokens"),
    "mask -1": (lambda: gft.gft_loss(lp46, A4, _with(m46.long(), (0, 0), -1), 0.5), "mask must be bool or hold only 0/1"),
    "mask NaN": (lambda: gft.gft_loss(lp46, A4, _with(m46.float(), (0, 0), math.nan), 0.5),
                 "mask must be bool or hold only 0/1"),
}


@pytest.mark.parametrize("case", TENSORS)
def test_bad_tensor_is_an_error_naming_it(case):
    call, pattern = TENSORS[case]
    with pytest.raises(ValueError, match=pattern):
        call()


def test_positive_logprobs_are_accepted_within_rounding_and_rejected_beyond():
    """A float32 log-softmax can round a sure token to a hair above 0; more is a bug upstream."""
    assert torch.isfinite(gft.gft_loss(_with(lp46, (0, 0), 0.5 * gft.LOGPROB_TOL), A4, m46, 0.5))
    with pytest.raises(ValueError, match=r"logprobs must be <= 0 \(log-probabilities\), max is 0.0002"):
        gft.gft_loss(_with(lp46, (0, 0), 2 * gft.LOGPROB_TOL), A4, m46, 0.5)


def test_integer_mask_gives_the_same_loss_and_gradient_as_bool():
    """Behaviour chosen for integer masks: accepted when they hold only 0/1, same as bool."""
    m = torch.tensor([[1, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 0, 0, 0]])
    A = torch.tensor([1.0, -0.5, 2.0, 0.3])
    losses = {"gft": lambda lp, mm: gft.gft_loss(lp, A, mm, 0.4, agg="seq-mean-token-mean"),
              "sft": gft.sft_loss, "dft": gft.dft_loss,
              "grpo": lambda lp, mm: gft.grpo_loss(lp, lp.detach() - 0.1, A, mm, ref_logprobs=lp46, beta=0.1)}
    for name, fn in losses.items():
        ref_lp = lp46.clone().requires_grad_()
        ref = fn(ref_lp, m.bool())
        ref.backward()
        for mm in (m, m.int(), m.to(torch.uint8), m.float()):
            lp = lp46.clone().requires_grad_()
            loss = fn(lp, mm)
            loss.backward()
            assert torch.equal(loss, ref) and torch.equal(lp.grad, ref_lp.grad), (name, mm.dtype)
    assert gft.dcr_stats(lp46, m, 0.4) == gft.dcr_stats(lp46, m.bool(), 0.4)


# ----------------------------------------------------------------------------- checkpoints

def test_missing_checkpoint_is_an_error_naming_it(tmp_path):
    path = str(tmp_path / "nowhere.pt")
    with pytest.raises(FileNotFoundError, match=f"checkpoint {re.escape(path)}: no such file"):
        train.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        main("sft", "--init", path, "--out", str(tmp_path / "o"))


def test_checkpoint_path_that_is_a_folder_is_an_error_saying_so(base):
    folder = os.path.dirname(base)
    with pytest.raises(ValueError, match=f"checkpoint {re.escape(folder)} is a folder; give the ckpt.pt in it"):
        train.load_checkpoint(folder)


def _damage(raw, ck, how):
    """Bytes of a damaged copy of a checkpoint file."""
    w = ck["model"]["transformer.h.0.attn.c_attn.weight"].numpy().tobytes()
    at = raw.find(w) + len(w) // 2  # the middle of one weight matrix's bytes
    assert at > len(w) // 2
    b = bytearray(raw)
    if how == "bit flipped in a weight":
        b[at] ^= 0x01
    elif how == "bytes zeroed in a weight":
        b[at:at + 64] = bytes(64)
    elif how == "garbage at the end":
        b[-100:] = b"\xab" * 100
    elif how == "truncated to half":
        b = b[:len(b) // 2]
    elif how == "empty file":
        b = b""
    elif how == "text file":
        b = b"step 4\nthis is not a checkpoint\n"
    return bytes(b)


DAMAGES = {  # how the file is damaged: what the error says after "checkpoint PATH is "
    "truncated to half": "truncated or corrupted",
    "empty file": "truncated or corrupted",
    "bit flipped in a weight": r"truncated or corrupted \(ValueError: CRC mismatch in .*data/",
    "bytes zeroed in a weight": r"truncated or corrupted \(ValueError: CRC mismatch in .*data/",
    "garbage at the end": "truncated or corrupted",
    "text file": "truncated or corrupted",
    "dict without the keys": r"not a train.py checkpoint \(missing \['config', 'model', 'model_config', 'step'\]\)",
    "bare tensor": r"not a train.py checkpoint",
}


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_checkpoint_is_an_error_naming_it(base, tmp_path, how):
    path = str(tmp_path / "ck.pt")
    if how == "dict without the keys":
        torch.save({"weights": train.load_checkpoint(base)["model"]}, path)
    elif how == "bare tensor":
        torch.save(torch.zeros(3), path)
    else:
        with open(base, "rb") as f:
            raw = f.read()
        with open(path, "wb") as f:
            f.write(_damage(raw, train.load_checkpoint(base), how))
    with pytest.raises(ValueError, match=f"checkpoint {re.escape(path)} is " + DAMAGES[how]):
        train.load_checkpoint(path)


@pytest.mark.parametrize("change", ["model_config says wider", "a weight missing"])
def test_checkpoint_whose_weights_do_not_match_its_config_is_an_error(base, tmp_path, change):
    ck = train.load_checkpoint(base)
    if change == "model_config says wider":
        ck["model_config"] = dict(ck["model_config"], n_embd=64)
        words = r"size mismatch for lm_head.weight"
    else:
        del ck["model"]["transformer.ln_f.weight"]
        words = r"Missing key.*transformer.ln_f.weight"
    path = str(tmp_path / "other.pt")
    torch.save(ck, path)
    with pytest.raises(ValueError, match="(?s)" + re.escape(path) + ": weights do not match its model config.*" + words):
        main("sft", "--init", path, "--out", str(tmp_path / "o"))


@pytest.mark.parametrize("flag,value,have", [("--n_layer", "2", "n_layer=1"), ("--block_size", "64", "block_size=96"),
                                             ("--n_layer", "4", "n_layer=1"), ("--n_embd", "128", "n_embd=32"),
                                             ("--rope", "False", "rope=True")],
                         ids=["n_layer", "block_size", "n_layer at GPTConfig's default", "n_embd at GPTConfig's default",
                              "rope"])
def test_model_setting_that_disagrees_with_init_is_an_error(base, tmp_path, flag, value, have):
    """Given with --init, a model setting must agree with the checkpoint, even one equal to
    GPTConfig's default (it used to be ignored silently)."""
    with pytest.raises(ValueError, match=f"{flag} {value} differs from {re.escape(base)}'s {have}"):
        main("sft", "--init", base, flag, value, "--out", str(tmp_path / "o"))


def test_model_setting_that_agrees_with_init_is_accepted(base, tmp_path):
    main("sft", "--init", base, "--n_layer", "1", "--block_size", "96", "--steps", "1", "--out", str(tmp_path / "o"))


def test_resume_into_another_modes_run_is_an_error_naming_the_mode(base, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    shutil.copy(base, out / "ckpt.pt")  # a pretrain run's checkpoint
    with pytest.raises(ValueError, match=r"--resume with settings that differ .*mode: 'pretrain' -> 'sft'"):
        main("sft", "--init", base, "--out", str(out), "--resume", "true")


def test_resume_from_a_damaged_checkpoint_is_an_error_naming_it(base, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    with open(base, "rb") as f:
        (out / "ckpt.pt").write_bytes(f.read()[:1000])
    with pytest.raises(ValueError, match=re.escape(str(out / "ckpt.pt")) + " is truncated or corrupted"):
        main(*PRETRAIN, "--out", str(out), "--resume", "true")


def test_out_holding_a_run_is_refused_unless_resumed_or_overwritten(base, tmp_path):
    """Running a command again without --resume used to clear the earlier run's log at once and
    replace its checkpoint at the first save."""
    out = str(tmp_path / "o")
    ckpt, log = os.path.join(out, "ckpt.pt"), os.path.join(out, "metrics.jsonl")
    sft = ["sft", "--init", base, "--out", out, "--steps", "2", "--batch_size", "4"]
    main(*sft)
    before = [open(f, "rb").read() for f in (ckpt, log)]
    with pytest.raises(ValueError, match=re.escape(f"--out {out} already holds a run ({ckpt}): pass --resume true "
                                                   f"to continue it, --overwrite true to start again")):
        main(*sft)
    with pytest.raises(ValueError, match=re.escape(f"--out {out} holds a training run ({ckpt}); eval would replace "
                                                   f"its metrics.jsonl")):
        main("eval", "--init", base, "--out", out)
    assert [open(f, "rb").read() for f in (ckpt, log)] == before  # untouched
    for flag in ("--resume", "--overwrite"):  # eval reads neither: no way past the guard
        with pytest.raises(ValueError, match=f"{flag} True: mode eval does not read this setting"):
            main("eval", "--init", base, "--out", out, flag, "true")
    with pytest.raises(ValueError, match=re.escape(f"--init {ckpt} is the checkpoint that --overwrite would remove")):
        main("gft", "--init", ckpt, "--out", out, "--steps", "1", "--overwrite", "true")
    assert [open(f, "rb").read() for f in (ckpt, log)] == before  # untouched
    with open(log, "a") as f:
        f.write("{damaged\n")  # a new run does not read the old log: it replaces it
    main(*sft, "--lr", "1e-3", "--overwrite", "true")
    rows = [json.loads(l) for l in open(log)]
    assert [r["config"]["lr"] for r in rows if "config" in r] == [1e-3]  # the new run's log alone
    assert train.load_checkpoint(ckpt)["config"]["lr"] == 1e-3


def test_overwrite_removes_the_old_checkpoint_before_the_first_step(base, tmp_path, monkeypatch):
    """Else a run killed before its first save would leave the old checkpoint beside the new log,
    and --resume would continue the old run."""
    out = str(tmp_path / "o")
    sft = ["sft", "--init", base, "--out", out, "--steps", "2", "--batch_size", "4"]
    main(*sft)

    def killed(cfg, s):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "loop", killed)
    with pytest.raises(KeyboardInterrupt):
        main(*sft, "--overwrite", "true")
    assert not os.path.exists(os.path.join(out, "ckpt.pt"))
    assert [list(json.loads(l)) for l in open(os.path.join(out, "metrics.jsonl"))] == [["config", "world", "params",
                                                                                        "base"]]


def test_out_that_is_a_file_is_an_error(base, tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    with pytest.raises(ValueError, match=re.escape(f"--out {path} is a file, not a folder")):
        main("sft", "--init", base, "--out", str(path), "--steps", "1", "--batch_size", "4")


def test_a_run_folder_moved_elsewhere_resumes(base, tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    main("sft", "--init", base, "--out", a, "--steps", "2", "--batch_size", "4")
    shutil.copytree(a, b)  # its checkpoint's config says --out a
    main("sft", "--init", base, "--out", b, "--steps", "2", "--batch_size", "4", "--resume", "true")  # no --override
    assert f"resumed {os.path.join(b, 'ckpt.pt')} at step 2" in capsys.readouterr().out


def test_damaged_log_line_is_an_error_naming_file_and_line(base, tmp_path):
    out = str(tmp_path / "o")
    log = os.path.join(out, "metrics.jsonl")
    main("sft", "--init", base, "--out", out, "--steps", "2", "--batch_size", "4", "--ckpt_every", "1")
    lines = open(log).readlines()
    lines[1:2] = ["\n", '{"step": 1, garbage\n']  # a blank line (tolerated) first: the count is the file's
    open(log, "w").writelines(lines)
    with pytest.raises(ValueError, match=re.escape(f"{log}:3: not a JSON line")):
        main("sft", "--init", base, "--out", out, "--steps", "2", "--batch_size", "4", "--ckpt_every", "1",
             "--resume", "true")


def test_checkpoint_and_metrics_are_fsynced_before_the_rename_that_publishes_them(tmp_path, monkeypatch):
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.realpath(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = str(tmp_path / "ckpt.pt")
    train.save_checkpoint(path, model={}, model_config={}, config={}, step=3)
    assert events == [("fsync", os.path.realpath(path + ".tmp")), ("replace", os.path.realpath(path + ".tmp"))]
    assert train.load_checkpoint(path)["step"] == 3
    events.clear()
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"config": {}}\n{"step": 1}\n{"step": 2}\n')
    train._trim_metrics(str(log), 1)
    assert events == [("fsync", os.path.realpath(str(log) + ".tmp")), ("replace", os.path.realpath(str(log) + ".tmp"))]
    assert log.read_text() == '{"config": {}}\n{"step": 1}\n'


# ----------------------------------------------------------------------------- the command line, as a new user meets it

def cli_env(debug=False):
    """One thread, and GFT_DEBUG=1 only when asked: not inherited from the shell that runs the tests."""
    env = {k: v for k, v in os.environ.items() if k != "GFT_DEBUG"}
    env.update(OMP_NUM_THREADS="1", **({"GFT_DEBUG": "1"} if debug else {}))
    return env


def cli(*args, debug=False):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], env=cli_env(debug), cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("case", ["missing --init file", "malformed JSONL line", "fine-tuning mode without --init"])
def test_bad_input_on_the_command_line_is_one_line_on_stderr_not_a_traceback(base, tmp_path, case):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GOOD) + "\n{not json\n")
    argv, words = {
        "missing --init file": (["sft", "--init", str(tmp_path / "nowhere.pt")], f"checkpoint {tmp_path / 'nowhere.pt'}: no such file"),
        "malformed JSONL line": (["sft", "--init", base, "--data", str(bad)], f"{bad}:2: malformed JSON"),
        "fine-tuning mode without --init": (["gft"], "mode gft needs --init CHECKPOINT"),
    }[case]
    p = cli(*argv, "--out", str(tmp_path / "o"), *fast(argv))
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and p.stderr.startswith("error: "), p.stderr
    assert words in p.stderr


def test_ctrl_c_is_one_line_on_stderr_saying_how_to_go_on_and_keeps_the_checkpoint(tmp_path):
    out = str(tmp_path / "o")
    args = [sys.executable, os.path.join(ROOT, "train.py"), "pretrain", "--out", out, "--steps", "100000",
            "--gate_pass1", "0", "--ckpt_every", "2", "--log_every", "1", "--batch_size", "4", *TINY, *fast(["pretrain"])]
    # SIGINT as a terminal delivers it: a job started in the background (`pytest ... &`) inherits it ignored
    p = subprocess.Popen(args, cwd=ROOT, env=dict(cli_env(), PYTHONUNBUFFERED="1"),  # GFT_DEBUG=1 re-raises
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in p.stdout:  # past the first checkpoint
            if line.startswith("step 3/"):
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()  # a run that ignored the signal must not outlive the test (no-op once it has exited)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == ("interrupted (Ctrl-C): a training run keeps the last checkpoint it wrote "
                                            "in --out (one every --ckpt_every steps; the steps since are lost); the "
                                            "same command with --resume true continues from it, or starts afresh if "
                                            "none was written yet")
    assert train.load_checkpoint(os.path.join(out, "ckpt.pt"))["step"] >= 2


def test_unknown_device_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"device='gpu' is not a device; use auto, cpu, cuda or cuda:N"):
        pick_device("gpu")


def test_gft_debug_shows_the_traceback(tmp_path):
    # --out under tmp_path: the default out/sft is the repository's, where the README's sft command leaves a run,
    # and then check_out's "already holds a run" was raised before the missing --init
    p = cli("sft", "--init", str(tmp_path / "nowhere.pt"), "--out", str(tmp_path / "o"), debug=True)
    assert p.returncode == 1 and "Traceback" in p.stderr and "FileNotFoundError" in p.stderr


@pytest.mark.parametrize("typo,suggestion", [("--step", "--steps"), ("--n_rollouts", "--n_rollout"), ("--ta", "--tau")])
def test_unknown_setting_close_to_a_known_one_suggests_it(typo, suggestion):
    with pytest.raises(SystemExit, match=f"did you mean {suggestion}\\?"):
        train.parse_args(["gft", "--init", "x.pt", typo, "1"])


def test_eval_prints_the_final_line_then_json_and_run_prints_no_json(base, tmp_path, capsys):
    main("eval", "--init", base, "--out", str(tmp_path / "e"))
    out = capsys.readouterr().out
    assert out.startswith("final | acc ") and json.loads(out[out.index("\n{") + 1:])["step"] == 4
    train.run(train.parse_args(["eval", "--init", base, "--out", str(tmp_path / "d"), *fast(["eval"])]))  # as the demo
    out = capsys.readouterr().out
    assert out.startswith("final | acc ") and "{" not in out


def test_data_reports_records_read_and_the_split(base, tmp_path, capsys):
    path = os.path.join(ROOT, "data", "example.jsonl")
    main("sft", "--init", base, "--data", path, "--steps", "1", "--out", str(tmp_path / "o"))
    assert (f"{path}: 50 records read: the first 45 are the fine-tuning pool, the last 5 the held-out test split"
            in capsys.readouterr().out)


@pytest.mark.parametrize("record,words", [(LONG_PROMPT, "PATH:2: prompt + expert is 137 tokens"),
                                          (TIGHT_PROMPT, "(62 tokens) + max_new_tokens 48 = 110 > block_size 96")],
                         ids=["record longer than the block", "prompt + response budget exceeds the block"])
def test_block_size_error_with_init_says_a_new_base_is_needed(base, tmp_path, record, words):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ValueError) as e:
        main("sft", "--init", base, "--data", str(path), "--out", str(tmp_path / "o"))
    assert words.replace("PATH", str(path)) in str(e.value)
    assert "pretrain a new base with a larger --block_size" in str(e.value) and "raise" not in str(e.value)


# ----------------------------------------------------------------------------- faults: SIGKILL, then resume

@pytest.mark.parametrize("mode,fault", [("gft", "kill_in_step:3"), ("gft", "kill_in_ckpt:4"),
                                        ("pretrain", "kill_in_step:3")])
def test_killed_run_resumes_from_last_complete_checkpoint_to_the_same_weights(base, gft_full, tmp_path, mode, fault):
    args = [*GFT, "--init", base] if mode == "gft" else PRETRAIN
    full = gft_full if mode == "gft" else os.path.dirname(base)
    out = str(tmp_path / "cut")
    p = train_py(*args, "--out", out, fault=fault)
    assert p.returncode == -9, p.stdout[-2000:] + p.stderr[-2000:]  # died by SIGKILL
    assert ckpt(out)["step"] == 2  # the last complete checkpoint
    tmp = os.path.join(out, "ckpt.pt.tmp")
    if fault.startswith("kill_in_ckpt"):  # the half-written file is there and is recognised as such
        with pytest.raises(ValueError, match="truncated or corrupted"):
            train.load_checkpoint(tmp)
    at_2 = ckpt(out)["model"]
    r = ok(train_py(*args, "--out", out, "--resume", "true"))
    assert f"resumed {os.path.join(out, 'ckpt.pt')} at step 2" in r.stdout
    assert same_weights(ckpt(out)["model"], ckpt(full)["model"])  # bitwise
    assert not same_weights(at_2, ckpt(full)["model"])  # and steps 3-4 did change them
    assert not os.path.exists(tmp)
    rows = metrics(out)
    assert [m.get("step") for m in rows if "step" in m] == [1, 2, 3, 4]  # no log line lost or doubled
    assert sum("config" in m for m in rows) == 1 and sum("final" in m for m in rows) == 1


def test_kill_before_the_first_checkpoint_restarts_with_one_config_line(tmp_path, monkeypatch):
    def killed(path, **obj):  # in process: the run dies at its first checkpoint
        raise KeyboardInterrupt("simulated kill")

    out = str(tmp_path / "o")
    monkeypatch.setattr(train, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        main(*PRETRAIN, "--out", out)
    monkeypatch.undo()
    main(*PRETRAIN, "--out", out, "--resume", "true")  # nothing to resume: starts fresh
    rows = metrics(out)
    assert sum("config" in m for m in rows) == 1
    assert [m["step"] for m in rows if "step" in m] == [1, 2, 3, 4]


def test_log_line_torn_by_a_crash_is_dropped_on_resume(tmp_path):
    out = str(tmp_path / "o")
    main(*PRETRAIN, "--out", out)
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write('{"final": {"acc_te')  # the process died in the middle of this write
    main(*PRETRAIN, "--out", out, "--resume", "true")
    rows = metrics(out)  # every line parses
    assert [m["step"] for m in rows if "step" in m] == [1, 2, 3, 4] and sum("final" in m for m in rows) == 1


# ----------------------------------------------------------------------------- faults: non-finite loss or gradient

@pytest.fixture
def saved(monkeypatch):
    """Record every checkpoint as it is written: {step: (file bytes, model weights)}."""
    seen, real = {}, train.save_checkpoint

    def recording(path, **obj):
        real(path, **obj)
        with open(path, "rb") as f:
            seen[obj["step"]] = (f.read(), {k: v.clone() for k, v in obj["model"].items()})

    monkeypatch.setattr(train, "save_checkpoint", recording)
    return seen


def test_nonfinite_loss_stops_naming_step_and_keeps_last_checkpoint_intact(base, tmp_path, monkeypatch, saved):
    out = str(tmp_path / "o")
    _faulty_train.install("nan_loss", 3, monkeypatch.setattr)
    with pytest.raises(FloatingPointError, match=r"step 3: non-finite loss and grad norm; stopping. The last checkpoint, "
                                                 + re.escape(os.path.join(out, "ckpt.pt")) + " at step 2, is intact"):
        main(*GFT, "--init", base, "--out", out, "--ckpt_every", "1")
    assert list(saved) == [1, 2]
    with open(os.path.join(out, "ckpt.pt"), "rb") as f:
        assert f.read() == saved[2][0]  # byte-identical to what step 2 wrote
    monkeypatch.setattr(train, "train_step", real_train_step)
    main(*GFT, "--init", base, "--out", out, "--ckpt_every", "1", "--resume", "true")  # and it resumes
    assert ckpt(out)["step"] == 4


def test_nonfinite_gradient_with_finite_loss_stops_naming_the_gradient(base, tmp_path, monkeypatch):
    calls, real = [], train.train_step

    def exploding(*a, **k):  # the 3rd step's backward sends inf into every gradient
        loss, m = real(*a, **k)
        calls.append(1)
        if len(calls) == 3:
            loss.register_hook(lambda g: g * math.inf)
        return loss, m

    monkeypatch.setattr(train, "train_step", exploding)
    with pytest.raises(FloatingPointError, match=r"step 3: non-finite grad norm; stopping") as e:
        main(*GFT, "--init", base, "--out", str(tmp_path / "o"))
    assert "loss" not in str(e.value).split(";")[0]  # the loss itself was finite
    assert ckpt(str(tmp_path / "o"))["step"] == 2


def test_skip_nonfinite_skips_the_step_counts_it_and_finishes(base, tmp_path, monkeypatch, saved, capsys):
    out = str(tmp_path / "o")
    _faulty_train.install("nan_loss", 3, monkeypatch.setattr)
    main(*GFT, "--init", base, "--out", out, "--ckpt_every", "1", "--skip_nonfinite", "true")
    assert "step 3: non-finite loss and grad norm, skipped (1 so far)" in capsys.readouterr().out
    assert [m["skipped"] for m in metrics(out) if "step" in m] == [0, 0, 1, 1]
    assert [train.load_checkpoint(os.path.join(out, "ckpt.pt"))["skipped"]] == [1]
    assert same_weights(saved[3][1], saved[2][1])  # the skipped step changed nothing
    assert not same_weights(saved[4][1], saved[3][1])  # the next one trained again
    assert all(torch.isfinite(v).all() for v in saved[4][1].values())


# ----------------------------------------------------------------------------- gradient explosion

TAUS = (0.0, 1e-4, 1e-3, 0.01, 0.1, 0.5, 1.0)  # as experiments/grad_explosion.py: the paper's range and the band


def unlikely_targets(n=6, t=12, vocab=258, lo=1e-6, hi=1e-2, seed=0):
    """Sharp random logits (n, t, vocab) and, per position, a random target whose probability is
    in [lo, hi]; mask (n, t) is False where none is. The logit gradient is a function of the
    logits and the target only, so no model is needed."""
    g = torch.Generator().manual_seed(seed)
    logits = 4.0 * torch.randn(n, t, vocab, generator=g)
    p = logits.softmax(-1)
    band = (p >= lo) & (p <= hi)
    score = torch.rand(band.shape, generator=g).masked_fill(~band, -1.0)
    return logits, score.argmax(-1), band.any(-1)


def logit_grads(logits, targets, mask, tau=None):
    """Per-token |dL/dz| (rescaled to one token), C/p and p; tau=None is SFT, else GFT with A = 1."""
    z = logits.clone().requires_grad_()
    lp = torch.where(mask, F.log_softmax(z, -1).gather(-1, targets[..., None]).squeeze(-1), 0.0)  # (N, T)
    loss = gft.sft_loss(lp, mask) if tau is None else gft.gft_loss(lp, torch.ones(lp.shape[0]), mask, tau)
    loss.backward()
    p = lp.detach()[mask].exp()
    return {"logit": (z.grad * mask.sum()).norm(dim=-1)[mask], "p": p,
            "weight": gft.dcr_coefficient(lp.detach(), tau or 0.0)[mask] / p}


def test_gft_logit_gradient_never_exceeds_sft_and_shrinks_as_tau_grows():
    """Per token, with A = 1: |dL/dz|_GFT = C(p) |dL/dz|_SFT, C = p < 1 below tau, else 1. So GFT
    <= SFT for every tau, non-increasing in tau, equal at tau = 0.
    experiments/grad_explosion.py prints the figures for a fitted model."""
    batch = unlikely_targets()
    sft = logit_grads(*batch)
    res = {f"GFT tau={tau:g}": logit_grads(*batch, tau=tau) for tau in TAUS}
    assert len(sft["p"]) >= 50 and sft["p"].min() >= 1e-6 and sft["p"].max() <= 1e-2
    assert torch.equal(res["GFT tau=0"]["logit"], sft["logit"])  # tau = 0 is SFT exactly
    prev = sft["logit"]
    for tau in TAUS:
        g = res[f"GFT tau={tau:g}"]["logit"]
        assert (g <= sft["logit"] * (1 + 1e-5)).all(), tau
        assert (g <= prev * (1 + 1e-5)).all(), tau
        assert (res[f"GFT tau={tau:g}"]["weight"] <= max(1.0, 1.0 / tau if tau else math.inf) * (1 + 1e-5)).all()
        prev = g
    # every target is below tau = 0.01: each gradient is scaled by its p, at most 1e-2 of SFT's
    ratio = res["GFT tau=0.01"]["logit"] / sft["logit"]
    torch.testing.assert_close(ratio, res["GFT tau=0.01"]["p"], rtol=1e-4, atol=0)
    assert sft["weight"].max() > 1e4 and res["GFT tau=0.5"]["weight"].max() <= 1 + 1e-5  # 1/p vs C/p


def test_resume_keeps_the_log_lines_up_to_the_checkpoint_s_step_gate_rows_by_their_own_step(tmp_path):
    gate = lambda step: {"gate": {"step": step, "met": False}}  # a gate row: no "step" of its own
    rows = [{"config": {}}, {"step": 1}, gate(1), {"step": 2}, gate(2), {"step": 3}, gate(3), {"final": {"step": 3}}]
    log = tmp_path / "metrics.jsonl"
    for step, kept in [(2, rows[:5]), (3, rows[:7]), (0, [])]:
        log.write_text("".join(json.dumps(r) + "\n" for r in rows))
        train._trim_metrics(str(log), step)
        assert [json.loads(l) for l in log.read_text().splitlines()] == kept, step
