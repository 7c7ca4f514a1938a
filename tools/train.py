#!/usr/bin/env python
"""Train with PPO from the command line (Hydra).

    python tools/train.py env=cartpole seed=1 run=cp1
    python tools/train.py -m env=cartpole seed=0,1,2 run=sweep
    python tools/train.py env=acrobot trainer.total_timesteps=200000 runs_dir=/tmp/runs

Writes ``<runs_dir>/<run>/`` with config.yaml, metrics.jsonl, summary.json and checkpoints/.
Running the same command (same ``run``) again resumes from the newest complete checkpoint.
Ctrl-C or SIGTERM stop after the current epoch with a checkpoint (exit 130 / 143). Exit 2: bad
input (config, an existing run with resume=never, a damaged checkpoint); exit 1: the run failed
(an env, non-finite training, a run record or checkpoint that cannot be written).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from metta_rl import cli  # noqa: E402
from metta_rl.records.checkpoint import CheckpointError  # noqa: E402
from metta_rl.config import ConfigError  # noqa: E402
from metta_rl.managers.environment import EnvError  # noqa: E402
from metta_rl.managers.guard import TrainingError  # noqa: E402
from metta_rl.records.run_dir import RunExistsError, RunRecordError  # noqa: E402
from metta_rl.signals import TrainingInterrupted  # noqa: E402
from metta_rl.trainer import Trainer  # noqa: E402


@hydra.main(config_path=str(cli.CONFIG_DIR), config_name=cli.CONFIG_NAME, version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        config = cli.to_trainer_config(cfg)
        with Trainer(config, run_dir=cli.run_dir_for_job(cfg)) as trainer:
            trainer.train()
    except (ConfigError, RunExistsError, CheckpointError) as exc:
        cli.fail(str(exc), cli.EXIT_BAD_INPUT)
    except (EnvError, TrainingError, RunRecordError) as exc:
        # A run record or checkpoint that cannot be written is a failure of the run, not of its input.
        cli.fail(str(exc), 1)
    except TrainingInterrupted as exc:
        # Envs and workers are closed by now (the Trainer's context manager).
        print(str(exc), file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


if __name__ == "__main__":
    cli.setup_logging()
    cli.register_configs()
    cli.preflight(sys.argv[1:])
    main()
