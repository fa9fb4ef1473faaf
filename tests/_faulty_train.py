"""Fault injection for the reliability tests: train.py with one fault patched in, at step N
(counted from 1, as the progress lines count; the run must start from step 0 for the count).

    python tests/_faulty_train.py WHAT:N [train.py arguments]

WHAT is kill_in_step (SIGKILL after the backward of step N, before its optimiser step),
kill_in_ckpt (SIGKILL while step N's checkpoint is written: its .tmp file half written, the
rename not done) or nan_loss (step N's loss multiplied by NaN). In process, a test calls
install(WHAT, N, monkeypatch.setattr) and then train.main.
"""
import math
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script: the root
import torch  # noqa: E402

import train  # noqa: E402


def install(what, n, setattr=setattr):
    """Patch train so that the run fails at step n; setattr may be monkeypatch.setattr."""
    if what == "kill_in_ckpt":
        real = train.save_checkpoint

        def save_checkpoint(path, **obj):
            if obj["step"] != n:
                return real(path, **obj)
            torch.save(obj, path + ".tmp")
            os.truncate(path + ".tmp", os.path.getsize(path + ".tmp") // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        setattr(train, "save_checkpoint", save_checkpoint)
    elif what == "kill_in_step":
        real = train.make_optimizer

        def make_optimizer(*a, **k):
            optim, calls, step = real(*a, **k), [], None

            def killing_step(*a, **k):
                calls.append(1)
                if len(calls) == n:
                    os.kill(os.getpid(), signal.SIGKILL)
                return step(*a, **k)
            optim.step, step = killing_step, optim.step
            return optim
        setattr(train, "make_optimizer", make_optimizer)
    elif what == "nan_loss":
        real, calls = train.train_step, []

        def train_step(*a, **k):
            loss, m = real(*a, **k)
            calls.append(1)
            return (loss * math.nan if len(calls) == n else loss), m
        setattr(train, "train_step", train_step)
    else:
        raise ValueError(f"unknown fault {what!r}")


if __name__ == "__main__":
    what, n = sys.argv[1].split(":")
    install(what, int(n))
    train.main(sys.argv[2:])
