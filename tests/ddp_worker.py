"""A torchrun worker for tests/test_distributed.py: the Trainer under torchrun, as a script would
use it, recording what each rank holds so the test can compare ranks instead of assuming.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py \\
        CONFIG_JSON RUN_DIR_PREFIX OUT_DIR

Each rank passes its own run directory (``RUN_DIR_PREFIX<rank>``): rank 0's is the one every
rank must use, so anything found in another rank's folder is a write that should not have
happened. After set-up and after every epoch each rank appends to ``OUT_DIR/rank<r>.jsonl``:
the epoch, the agent step, a SHA-256 of its flat parameter buffer and of its Adam moments, and
of the observations its rollout collected (which must differ between ranks: envs of their own).
``DDP_TEST_NAN=rank:epoch`` makes that rank's value loss NaN during that epoch's update.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from metta_rl.config import TrainerConfig  # noqa: E402
from metta_rl.trainer import Trainer  # noqa: E402


def sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def main() -> None:
    config = TrainerConfig.from_dict(json.loads(sys.argv[1]))
    rank = int(os.environ["RANK"])
    out = Path(sys.argv[3]) / f"rank{rank}.jsonl"
    with Trainer(config, run_dir=f"{sys.argv[2]}{rank}", console=False) as trainer, open(out, "a") as f:

        def record(phase: str) -> None:
            moments = trainer.optimizer.optimizer.state_dict()["state"].get(0, {})
            f.write(json.dumps({
                "phase": phase,
                "epoch": trainer.progress.epoch,
                "agent_step": trainer.progress.agent_step,
                "params": sha(trainer.optimizer.flat),
                "adam": sha(moments["exp_avg"]) if moments else None,
                "obs": sha(trainer.rollout.buffer.obs),
                "stop": trainer.stop_reason(),
            }) + "\n")
            f.flush()

        nan = os.environ.get("DDP_TEST_NAN")  # "rank:epoch": that rank's value loss is NaN in that epoch
        if nan is not None and int(nan.split(":")[0]) == rank:
            from metta_rl.core import ppo

            value_loss, nan_epoch = ppo.value_loss, int(nan.split(":")[1])

            def nan_value_loss(*args, **kwargs):
                out = value_loss(*args, **kwargs)
                return out * float("nan") if trainer.progress.epoch == nan_epoch else out

            ppo.value_loss = nan_value_loss

        record("setup")
        while trainer.stop_reason() is None:
            trainer.train_epoch()
            record("epoch")


if __name__ == "__main__":
    main()
