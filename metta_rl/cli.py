"""Hydra glue for ``tools/train.py``, ``tools/sweep.py`` and ``tools/bench.py``.

The schema's defaults are registered in Hydra's ConfigStore as a plain node (Hydra cannot take
a pydantic model as a structured config); ``configs/`` holds the YAML groups.

A plain single run (``tools/train.py env=cartpole seed=1``: overrides only) is composed once,
with Hydra's compose API (:func:`compose_run`), validated by the pydantic models, and trained;
its runtime checks (:func:`metta_rl.envs.checks.check_runtime`: env modules import, ids are
registered) are the Trainer's set-up, before it writes anything. Anything else on the command
line (``-m`` multiruns, ``--help``, ``--cfg``, ``hydra.*`` settings) goes to Hydra's app, and
before it runs, every job is composed, validated and runtime-checked here (:func:`preflight`),
so a bad third job fails before the first trains. Either way a typo, a missing config group
or a bad value is one line on stderr and exit 2, and nothing is written anywhere (Hydra's own
errors are multi-line with a stack-trace hint).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, get_origin

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel

from metta_rl.config import ConfigError, TrainerConfig
from metta_rl.envs.checks import check_runtime

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIG_NAME = "train"
SWEEP_CONFIG_NAME = "sweep"  # configs/sweep.yaml: train.yaml plus a search space (tools/sweep.py)
EXIT_BAD_INPUT = 2

_HINT_LINES = ("Set the environment variable HYDRA_FULL_ERROR", "To append to your config use")


def register_configs(*, sweep: bool = False) -> None:
    """Register the schema nodes: ``configs/train.yaml`` lists ``trainer_schema`` first in its
    defaults; ``configs/sweep.yaml`` (``sweep=True``) adds ``sweep_schema``, the ``sweep`` node."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="trainer_schema", node=schema_node())
    if sweep:
        store.store(name="sweep_schema", node=sweep_schema_node())


def schema_node() -> DictConfig:
    """Every field of :class:`TrainerConfig` with its default, as a plain OmegaConf node.

    Every field is there, so a dotted override of any field works (``ppo.target_kl=0.02``
    where the default is null) and Hydra's struct mode refuses a key that is not (the message
    is then the schema's own, see :func:`one_line`). The node carries no types: the values are
    validated by the pydantic models after composition. Free-form dicts (``env.kwargs``) take
    new keys: ``env.kwargs.num_agents=8``."""
    node = OmegaConf.create(TrainerConfig().to_dict())
    for path in _free_form_dicts(TrainerConfig):
        OmegaConf.set_struct(OmegaConf.select(node, path), False)
    return node


def sweep_schema_node() -> DictConfig:
    """``{"sweep": <every SweepConfig field with its default>}``, its dicts (the search space,
    sampler and pruner arguments) free-form, as :func:`schema_node` is for a run."""
    from metta_rl.sweep.config import SweepConfig

    node = OmegaConf.create({"sweep": SweepConfig.model_construct().to_dict()})
    for path in _free_form_dicts(SweepConfig, "sweep."):
        OmegaConf.set_struct(OmegaConf.select(node, path), False)
    return node


def _free_form_dicts(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _free_form_dicts(annotation, f"{prefix}{name}.")
        elif get_origin(annotation) is dict:
            yield f"{prefix}{name}"


def one_line(exc: BaseException) -> str:
    """A Hydra/OmegaConf/our error as one line, hint lines dropped."""
    from hydra.errors import MissingConfigException

    lines = [ln.strip() for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(_HINT_LINES)]
    if isinstance(exc, MissingConfigException) and exc.options is not None:
        head = lines[0] if lines else "missing config"
        return f"{head} (available: {', '.join(sorted(exc.options))})"
    match = re.match(r"Could not override '([^']+)'", lines[0]) if lines else None
    if match:
        return _unknown_key_message(match.group(1))
    text = " ".join(lines[:3]) if lines else type(exc).__name__
    return re.sub(r"\s+", " ", text)[:500]


def _unknown_key_message(dotted: str) -> str:
    """The schema's own message for an unknown dotted key: ``TrainerConfig.from_dict`` names it,
    suggests the closest field and lists the allowed ones, the same as for a YAML typo."""
    data: Any = None
    for part in reversed(dotted.split(".")):
        data = {part: data}
    try:
        if dotted.startswith("sweep."):  # tools/sweep.py's own section
            from metta_rl.sweep.config import SweepConfig

            SweepConfig(**data["sweep"])
        else:
            TrainerConfig.from_dict(data)
    except ConfigError as exc:
        return str(exc)
    return f"{dotted}: no such config field"


def to_trainer_config(cfg: DictConfig) -> TrainerConfig:
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    return TrainerConfig.from_dict(data)


def _job_overrides(argv: list[str]) -> list[list[str]] | None:
    """Every job's override list (sweeps expanded), or None if Hydra is asked for something else."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion") for a in argv):
        return None
    overrides = [a for a in argv if not a.startswith("-")]
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def compose(overrides: list[str], *, config_name: str = CONFIG_NAME) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` (``train``) with overrides, as ``tools/train.py``
    does (no Hydra app needed: a single run, sweeps, tests, bench, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs(sweep=config_name == SWEEP_CONFIG_NAME)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose(config_name=config_name, overrides=overrides)


def plain_overrides(argv: list[str]) -> list[str] | None:
    """The command line as overrides when it is only overrides (a single run); None when it asks
    Hydra's app for more: a flag (``-m``, ``--help``, ``--cfg``...) or a ``hydra`` setting."""
    if any(a.startswith("-") or a.lstrip("+~").startswith("hydra") for a in argv):
        return None
    return list(argv)


def compose_run(overrides: list[str], *, config_name: str = CONFIG_NAME) -> tuple[DictConfig, TrainerConfig]:
    """Compose and validate one run, once; exit 2 with one line on bad input."""
    try:
        cfg = compose(overrides, config_name=config_name)
        return cfg, to_trainer_config(cfg)
    except Exception as exc:  # noqa: BLE001 - any composition or validation failure is bad input
        fail(one_line(exc), EXIT_BAD_INPUT)
        raise  # unreachable: fail() exits


def preflight(argv: list[str]) -> None:
    """Compose, validate and runtime-check every job; exit 2 with one line on the first bad one."""
    try:
        jobs = _job_overrides(argv)
        if jobs is None:
            return
        for job in jobs:
            check_runtime(to_trainer_config(compose(job)))
    except Exception as exc:  # noqa: BLE001 - any composition or validation failure is bad input
        fail(one_line(exc), EXIT_BAD_INPUT)


def fail(message: str, code: int) -> None:
    """One line on stderr and exit ``code``; under torchrun the line names the rank
    (``error: rank 1/2: ...``), so the rank that failed is the one its message is from."""
    from metta_rl.distributed import rank_prefix

    print(f"error: {rank_prefix()}{message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def exit_fast(code: int) -> NoReturn:
    """End the process now, skipping the interpreter's teardown of every module and object
    (about a second once torch is loaded: 3.4 s -> 2.4 s for ``python -c "import torch"``,
    median of 5 on this machine). Everything a normal exit does that matters still happens:
    the atexit handlers run (logging's flush, multiprocessing's, torch's), stdout and stderr
    are flushed. For the tools' ``__main__``, after the Trainer's cleanup has closed envs,
    workers and loggers; never for library code."""
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def run_main(main: Callable[[], object]) -> NoReturn:
    """Run a tool's main and :func:`exit_fast` with its exit code (``SystemExit`` included;
    any other exception propagates as usual, traceback and all)."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    exit_fast(code)


def setup_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def run_dir_for_job(cfg: DictConfig) -> Path:
    """``<runs_dir>/<run>`` for a single run; ``<runs_dir>/<run>/<job>_<overrides>`` in a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        return Path(hc.sweep.dir) / hc.sweep.subdir
    return Path(cfg.runs_dir) / str(cfg.run)
