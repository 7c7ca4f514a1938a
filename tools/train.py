#!/usr/bin/env python
"""Train with PPO from the command line (Hydra).

    python tools/train.py env=cartpole seed=1 run=cp1
    python tools/train.py env=cartpole trainer.target_return=475     # stop once eval reaches 475
    python tools/train.py -m env=cartpole seed=0,1,2 run=sweep
    python tools/train.py env=acrobot trainer.total_timesteps=200000 runs_dir=/tmp/runs
    torchrun --standalone --nproc_per_node=2 tools/train.py env=cartpole run=cp2   # 2 ranks (README)

Writes ``<runs_dir>/<run>/`` with config.yaml, metrics.jsonl, summary.json and checkpoints/.
Running the same command (same ``run``) again resumes from the newest complete checkpoint (a
run that reached its budget or its target_return is finished: it trains no further).
Ctrl-C or SIGTERM stop after the current epoch with a checkpoint (exit 130 / 143). Exit 2: bad
input (config, an existing run with resume=never, a damaged checkpoint); exit 1: the run failed
(an env, non-finite training, a run record or checkpoint that cannot be written).

A command line of overrides only is composed once and trained without a Hydra app (the start
is what a user waits for); ``-m``, ``--help``, ``--cfg`` and ``hydra.*`` settings go to Hydra's.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metta_rl import cli  # noqa: E402
from metta_rl.config import ConfigError, TrainerConfig  # noqa: E402
from metta_rl.records.checkpoint import CheckpointError  # noqa: E402
from metta_rl.records.run_dir import RunExistsError, RunRecordError  # noqa: E402
from metta_rl.signals import TrainingInterrupted  # noqa: E402


def train(config: TrainerConfig, run_dir: Path) -> None:
    """One run, its errors as exit codes and one line each."""
    from metta_rl.distributed import DistributedError, env_rank
    from metta_rl.managers.environment import EnvError
    from metta_rl.managers.guard import TrainingError
    from metta_rl.trainer import Trainer

    try:
        with Trainer(config, run_dir=run_dir) as trainer:
            trainer.train()
    except (ConfigError, RunExistsError, CheckpointError) as exc:
        cli.fail(str(exc), cli.EXIT_BAD_INPUT)
    except (EnvError, TrainingError, RunRecordError, DistributedError) as exc:
        # A run record or checkpoint that cannot be written is a failure of the run, not of its input.
        cli.fail(str(exc), 1)
    except TrainingInterrupted as exc:
        # Envs and workers are closed by now (the Trainer's context manager). Under torchrun
        # rank 0 (which wrote the checkpoint) says so; every rank exits alike.
        if env_rank()[0] == 0:
            print(str(exc), file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


def hydra_app() -> None:
    """Multiruns, --help, --cfg...: Hydra's app, after every job passed the preflight."""
    import hydra
    from omegaconf import DictConfig

    @hydra.main(config_path=str(cli.CONFIG_DIR), config_name=cli.CONFIG_NAME, version_base=None)
    def main(cfg: DictConfig) -> None:
        try:
            config = cli.to_trainer_config(cfg)
        except ConfigError as exc:
            cli.fail(str(exc), cli.EXIT_BAD_INPUT)
        train(config, cli.run_dir_for_job(cfg))

    cli.register_configs()
    cli.preflight(sys.argv[1:])
    main()


def main() -> None:
    cli.setup_logging()
    overrides = cli.plain_overrides(sys.argv[1:])
    if overrides is None:
        hydra_app()
    else:
        _, config = cli.compose_run(overrides)
        train(config, Path(config.runs_dir) / str(config.run))


if __name__ == "__main__":
    cli.run_main(main)  # exits without the interpreter's ~1 s teardown of torch
