#!/usr/bin/env python
"""Evaluate a saved policy: rebuild its env and network from the checkpoint alone, play N
episodes, print a summary table, write ``eval.json`` and optionally a replay.

    python tools/evaluate.py checkpoint=runs/cp1 episodes=50 replay=true
    python tools/evaluate.py checkpoint=runs/cp1/checkpoints/best deterministic=false seed=7 out=/tmp/eval.json

Arguments (``key=value``; nothing else is accepted):

    checkpoint=PATH     a checkpoint directory (``<run>/checkpoints/epoch_000123``, ``.../best``)
                        or a run directory (its newest complete checkpoint). Required.
    episodes=N          episodes per eval task (default: the run's ``evaluation.num_episodes``)
    replay=BOOL         also record one episode: a GIF (MettaGrid: its ``.json.z`` replay)
    deterministic=BOOL  argmax actions (default: the run's ``evaluation.deterministic``)
    seed=N              seed of the eval envs and action sampling (default: the run's seed,
                        so the same episodes the run's own evaluations played)
    out=PATH            where eval.json goes: a file, or a directory to hold ``eval.json``
                        (default: the checkpoint directory). Replays go to ``replays/`` beside it.
    device=NAME         cpu (default) or cuda[:N]

Bad input (an unknown key, a bad value, a missing or damaged checkpoint) is one line on stderr
and exit code 2; an env that fails while playing is exit code 1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")


class UsageError(ValueError):
    """A bad argument; the message is one line naming it."""


@dataclass(frozen=True)
class Args:
    checkpoint: Path
    episodes: int | None = None
    replay: bool = False
    deterministic: bool | None = None
    seed: int | None = None
    out: str | None = None
    device: str = "cpu"


ALLOWED = tuple(f.name for f in dataclasses.fields(Args))


def _int(key: str, text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{key}={text!r} is invalid: expected an integer >= {minimum}") from None
    if value < minimum:
        raise UsageError(f"{key}={text!r} is invalid: expected an integer >= {minimum}")
    return value


def _bool(key: str, text: str) -> bool:
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise UsageError(f"{key}={text!r} is invalid: expected true or false")


def parse_args(argv: list[str]) -> Args:
    from metta_rl.config import did_you_mean

    values: dict[str, str] = {}
    for arg in argv:
        key, sep, text = arg.partition("=")
        if not sep or not key:
            raise UsageError(f"argument {arg!r} is invalid: expected key=value with key one of {', '.join(ALLOWED)}")
        if key not in ALLOWED:
            raise UsageError(f"unknown argument '{key}'{did_you_mean(key, list(ALLOWED))}; allowed: {', '.join(ALLOWED)}")
        if key in values:
            raise UsageError(f"argument '{key}' is given twice")
        values[key] = text
    if not values.get("checkpoint"):
        raise UsageError("checkpoint=<checkpoint dir or run dir> is required")
    device = values.get("device", "cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise UsageError(f"device={device!r} is invalid: expected 'cpu' or 'cuda[:N]'")
    return Args(
        checkpoint=Path(values["checkpoint"]),
        episodes=_int("episodes", values["episodes"], 1) if "episodes" in values else None,
        replay=_bool("replay", values["replay"]) if "replay" in values else False,
        deterministic=_bool("deterministic", values["deterministic"]) if "deterministic" in values else None,
        seed=_int("seed", values["seed"], 0) if "seed" in values else None,
        out=values.get("out") or None,
        device=device,
    )


def eval_json_path(args: Args, checkpoint_dir: Path) -> Path:
    if args.out is None:
        return checkpoint_dir / "eval.json"
    out = Path(args.out).expanduser()
    if out.is_dir() or args.out.endswith("/"):
        return out / "eval.json"
    return out


def build_report(ckpt: Any, result: Any, *, eval_config: Any, seed: int, seconds: float) -> dict[str, Any]:
    """eval.json: the score, every episode, and where it came from."""
    from metta_rl.records.checkpoint import versions

    config = ckpt.config
    return {
        "checkpoint": str(ckpt.path),
        "run": ckpt.path.parent.parent.name if ckpt.path.parent.name == "checkpoints" else None,
        "env": config.env.name,
        "agent_step": ckpt.progress.agent_step,
        "epoch": ckpt.progress.epoch,
        "episodes": len(result.returns),
        "episodes_per_task": eval_config.num_episodes,
        "deterministic": eval_config.deterministic,
        "seed": seed,
        "mean_return": result.mean_return,
        "std_return": result.std_return,
        "min_return": min(result.returns) if result.returns else None,
        "max_return": max(result.returns) if result.returns else None,
        "mean_length": result.mean_length,
        "returns": list(result.returns),
        "lengths": list(result.lengths),
        "tasks": [
            {
                "name": t.name,
                "mean_return": t.mean_return,
                "std_return": t.std_return,
                "mean_length": t.mean_length,
                "episodes": len(t.returns),
                "returns": list(t.returns),
                "lengths": list(t.lengths),
            }
            for t in result.task_results
        ],
        "replay": result.replay_path,
        "wall_seconds": seconds,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }


def print_table(report: dict[str, Any], eval_path: Path) -> None:
    def num(value: Any, digits: int = 1) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

    actions = "deterministic" if report["deterministic"] else "sampled"
    rows = [
        ("checkpoint", report["checkpoint"]),
        ("env", report["env"]),
        ("trained", f"{report['agent_step']:,} agent steps, {report['epoch']} epochs"),
        ("episodes", f"{report['episodes']} ({actions} actions, seed {report['seed']})"),
        ("mean return", f"{num(report['mean_return'])} +/- {num(report['std_return'])}"),
        ("min / max return", f"{num(report['min_return'])} / {num(report['max_return'])}"),
        ("mean length", num(report["mean_length"])),
    ]
    if len(report["tasks"]) > 1:
        for t in report["tasks"]:
            score = f"{num(t['mean_return'])} +/- {num(t['std_return'])} over {t['episodes']}"
            rows.append((f"task {t['name']}", score))
    rows += [
        ("replay", report["replay"] or "-"),
        ("eval.json", str(eval_path)),
        ("time", f"{report['wall_seconds']:.1f} s"),
    ]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title="evaluation", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in rows:
            table.add_row(key, value)
        Console().print(table)
    else:
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
    # One parseable line, as the trainer's console ends with.
    print(
        f"eval: mean_return={num(report['mean_return'], 2)} std_return={num(report['std_return'], 2)} "
        f"episodes={report['episodes']} mean_length={num(report['mean_length'], 2)}",
        flush=True,
    )


def warn_skipped(given: Path, ckpt: Any) -> None:
    """Given a run directory, name every newer checkpoint that was skipped as damaged: an
    older checkpoint is never evaluated silently in place of the newest."""
    from metta_rl.records.checkpoint import CheckpointError, list_checkpoints, read_metadata

    if ckpt.path == given.resolve():
        return
    for path in list_checkpoints(given):
        if path.resolve() == ckpt.path:
            break
        try:
            read_metadata(path)
        except CheckpointError as exc:
            print(f"warning: skipped {exc}", file=sys.stderr, flush=True)


def evaluate(args: Args) -> int:
    import torch

    from metta_rl.records.checkpoint import load_checkpoint, policy_from_checkpoint
    from metta_rl.managers.evaluation import EvaluationManager
    from metta_rl.records.atomic import atomic_write
    from metta_rl.records.run_dir import _jsonable

    ckpt = load_checkpoint(args.checkpoint)
    warn_skipped(args.checkpoint, ckpt)
    config = ckpt.config
    if config.trainer.torch_threads > 0:
        torch.set_num_threads(config.trainer.torch_threads)
    eval_config = config.evaluation.replace(
        enabled=True,
        num_episodes=args.episodes if args.episodes is not None else config.evaluation.num_episodes,
        deterministic=args.deterministic if args.deterministic is not None else config.evaluation.deterministic,
        replay=args.replay,
    )
    seed = args.seed if args.seed is not None else config.seed
    device = torch.device(args.device)
    eval_path = eval_json_path(args, ckpt.path)

    start = time.perf_counter()
    policy = policy_from_checkpoint(ckpt, device=device)
    manager = EvaluationManager(env=config.env, config=eval_config, seed=seed, device=device)
    try:
        result = manager.evaluate(
            policy,
            agent_step=ckpt.progress.agent_step,
            epoch=ckpt.progress.epoch,
            replay_dir=eval_path.parent / "replays" if args.replay else None,
        )
    finally:
        manager.close()
    report = build_report(ckpt, result, eval_config=eval_config, seed=seed, seconds=time.perf_counter() - start)
    try:
        eval_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(eval_path, json.dumps(_jsonable(report), indent=2) + "\n")
    except OSError as exc:
        raise UsageError(f"out={str(eval_path)!r} cannot be written: {exc.strerror or exc}") from None
    print_table(report, eval_path)
    return 0


def fail(message: str, code: int) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    try:
        args = parse_args(argv)
    except UsageError as exc:
        return fail(str(exc), EXIT_BAD_INPUT)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from metta_rl.records.checkpoint import CheckpointError
    from metta_rl.config import ConfigError
    from metta_rl.managers.environment import EnvError
    from metta_rl.managers.evaluation import EvalError

    try:
        if args.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                return fail(f"device={args.device!r} is invalid: CUDA is not available on this machine", EXIT_BAD_INPUT)
        return evaluate(args)
    except (CheckpointError, ConfigError, UsageError) as exc:
        return fail(str(exc), EXIT_BAD_INPUT)
    except (EnvError, EvalError) as exc:
        return fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except BrokenPipeError:  # stdout closed early (| head): not an error of the evaluation
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the exit flush does not raise again
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
