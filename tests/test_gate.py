"""The pretraining gate and the base model's band: pretraining stops on a measured condition on
the val split, and a base outside the band GFT needs is refused, never silently used."""
import json
import os

import pytest
from hypothesis import example, given, settings, strategies as st

import train

TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "96", "--batch_size", "4",
        "--eval_n", "4", "--passk_problems", "2", "--passk_n", "2", "--kl_n", "2", "--max_new_tokens", "48",
        "--gate_n", "2", "--log_every", "1"]
LO, HI = train.BASE_BAND


@settings(deadline=None, derandomize=True)
@given(p1=st.floats(0, 1), acc=st.floats(0, 1))
@example(p1=LO, acc=train.BASE_GREEDY_MAX)  # the band's edges are inside
@example(p1=HI, acc=0.0)
def test_base_is_accepted_exactly_inside_the_band(p1, acc):
    inside = LO <= p1 <= HI and acc <= train.BASE_GREEDY_MAX
    assert (train.base_band_problem({"pass@1": p1, "acc_test": acc}) == "") == inside


@pytest.mark.parametrize("p1, acc, says", [(0.03, 0.05, "below"), (0.7, 0.97, "already solves"),
                                           (0.3, 0.99, "already solves")])
def test_a_base_outside_the_band_is_refused_with_its_figures(p1, acc, says):
    with pytest.raises(SystemExit) as e:
        train.require_base_in_band({"pass@1": p1, "acc_test": acc}, "out/base/ckpt.pt")
    msg = str(e.value)
    assert "out/base/ckpt.pt" in msg and f"{p1:.3f}" in msg and f"{acc:.3f}" in msg and says in msg


def fake_gate(met_at):
    """A gate_check that reports val pass@1 0.5 from step met_at on, 0 before (counts its calls)."""
    calls = []

    def check(model, tok, problems, cfg, step):
        calls.append(step)
        return {"val_pass@1": 0.5 if step >= met_at else 0.0, "val_acc": 0.0}
    return check, calls


def lines(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f]


def test_pretraining_stops_at_the_first_check_that_meets_the_gate(tmp_path, monkeypatch):
    check, calls = fake_gate(met_at=4)
    monkeypatch.setattr(train, "gate_check", check)
    out = str(tmp_path / "base")
    r = train.main(["pretrain", "--out", out, "--steps", "20", "--gate_every", "2", *TINY])
    assert calls == [2, 4]  # checked every 2 steps, stopped at the first check that met it
    ck = train.load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert ck["step"] == 4 and ck["finished"] and ck["gate"]["met"] and r["step"] == 4
    assert [l["gate"]["met"] for l in lines(out) if "gate" in l] == [False, True]
    # a finished base is not trained further by --resume
    before = ck["model"]
    train.main(["pretrain", "--out", out, "--steps", "20", "--gate_every", "2", "--resume", "true", *TINY])
    after = train.load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert after["step"] == 4 and all((before[k] == after["model"][k]).all() for k in before)


def test_pretraining_that_never_meets_the_gate_runs_to_its_cap_and_says_so(tmp_path, monkeypatch, capsys):
    check, calls = fake_gate(met_at=10 ** 9)
    monkeypatch.setattr(train, "gate_check", check)
    out = str(tmp_path / "base")
    train.main(["pretrain", "--out", out, "--steps", "5", "--gate_every", "2", *TINY])
    assert calls == [2, 4, 5]  # every gate_every steps, and at the cap
    ck = train.load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert ck["step"] == 5 and ck["finished"] and not ck["gate"]["met"]
    assert "gate was not met" in capsys.readouterr().out


def test_gate_zero_runs_every_step_without_checking(tmp_path, monkeypatch):
    check, calls = fake_gate(met_at=0)
    monkeypatch.setattr(train, "gate_check", check)
    out = str(tmp_path / "base")
    train.main(["pretrain", "--out", out, "--steps", "3", "--gate_pass1", "0", *TINY])
    assert calls == [] and train.load_checkpoint(os.path.join(out, "ckpt.pt"))["step"] == 3


def test_demo_stops_before_fine_tuning_when_its_base_misses_the_band(tmp_path, monkeypatch):
    modes = []

    def fake_run(cfg):
        modes.append(cfg.mode)
        return {"pass@1": 0.02, "acc_test": 0.05}  # a base that never learned to carry
    monkeypatch.setattr(train, "run", fake_run)
    with pytest.raises(SystemExit) as e:
        train.main(["--out", str(tmp_path / "demo")])
    assert modes == ["pretrain"]  # its final evaluation is the base row; no SFT or GFT on a base outside its band
    assert "0.020" in str(e.value) and "below" in str(e.value)


def test_a_check_that_exactly_reaches_the_target_meets_the_gate(tmp_path, monkeypatch):
    check, calls = fake_gate(met_at=2)  # 0.5 from step 2 on
    monkeypatch.setattr(train, "gate_check", check)
    out = str(tmp_path / "base")
    train.main(["pretrain", "--out", out, "--steps", "6", "--gate_every", "2", "--gate_pass1", "0.5", *TINY])
    assert calls == [2] and train.load_checkpoint(os.path.join(out, "ckpt.pt"))["gate"]["met"]
