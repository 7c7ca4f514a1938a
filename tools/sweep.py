#!/usr/bin/env python
"""Search hyperparameters with Optuna over PPO runs.

    python tools/sweep.py sweep=cartpole
    python tools/sweep.py sweep=cartpole sweep.trials=16 seed=1 trainer.total_timesteps=40000

The search space, objective, sampler and pruner are a config group (``configs/sweep/``); the
rest of the command line is any ``tools/train.py`` override, applied to every trial. Trials
run one after another in this process, each in ``<runs_dir>/<sweep.name>/trial_<n>/``; the
Optuna study is ``<runs_dir>/<sweep.name>/study.db``, so running the same command again
continues it (up to ``sweep.trials`` finished trials), and so can several processes at once.
At the end the trials and the best parameters are printed and written to ``sweep.json``.

Exit 2: bad input (one line naming the field); 130 / 143: stopped by SIGINT / SIGTERM (the
running trial writes its checkpoint and is recorded as failed; run the command again to go on).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metta_rl import cli  # noqa: E402
from metta_rl.config import ConfigError  # noqa: E402


def main(argv: list[str]) -> None:
    from metta_rl.sweep.study import sweep_from_overrides
    from metta_rl.sweep.trial import SweepInterrupted

    overrides = cli.plain_overrides(argv)
    if overrides is None:
        cli.fail("tools/sweep.py takes overrides only (key=value); Hydra flags such as -m are not supported",
                 cli.EXIT_BAD_INPUT)
    try:
        sweep = sweep_from_overrides(overrides)
        sweep.run(out=sys.stdout)  # checks the search space before the first trial
    except ConfigError as exc:
        cli.fail(str(exc), cli.EXIT_BAD_INPUT)
    except SweepInterrupted as exc:
        print(str(exc), file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue the sweep", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


if __name__ == "__main__":
    cli.setup_logging()
    cli.run_main(lambda: main(sys.argv[1:]))
