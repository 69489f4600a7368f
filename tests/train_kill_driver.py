"""Runs a training config in this process and SIGKILLs it at a chosen point (driven by test_train_resume).

    python train_kill_driver.py CONFIG.json iteration N    # killed right after iteration N (its hooks)
    python train_kill_driver.py CONFIG.json checkpoint N   # killed half-way through writing iter_N.pth
"""

from __future__ import annotations

import io
import os
import signal
import sys

import torch

from gmflow.train import TrainConfig, Trainer


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    config_path, mode, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    hooks = []
    if mode == "iteration":
        hooks.append(lambda trainer, iteration, record: _die() if iteration == at else None)
    elif mode == "checkpoint":
        real_save = torch.save

        def torn_save(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and isinstance(obj.get("meta"), dict) and obj["meta"].get("iter") == at:
                buf = io.BytesIO()
                real_save(obj, buf, *args, **kwargs)
                data = buf.getvalue()
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                _die()
            return real_save(obj, f, *args, **kwargs)

        torch.save = torn_save
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    Trainer(TrainConfig.from_file(config_path), hooks=hooks).fit()


if __name__ == "__main__":
    main()
