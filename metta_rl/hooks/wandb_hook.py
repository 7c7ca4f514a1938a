"""Weights & Biases logging as a hook (``wandb.enabled=true``).

Offline unless ``wandb.mode=online`` is asked for and an API key is available: with no network
and no key a run still logs, to ``<run_dir>/wandb``, for ``wandb sync`` later. The agent step
is the x-axis of every metric; metric families (``overview/``, ``losses/``, ``env/``,
``timing/``, ``system/``, ``eval/``) become the W&B panel sections. The resolved config is the
run config. The W&B run id is kept in ``<run_dir>/wandb/run_id``, so a resumed training run
continues the same W&B run instead of starting a new one. With ``wandb.log_checkpoints`` every
checkpoint directory is logged as a ``model`` artifact; an evaluation replay (a GIF) is logged
as a video at its agent step.
"""

from __future__ import annotations

import logging
import math
import netrc
import os
import secrets
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from metta_rl.config import WandbConfig
from metta_rl.hooks import EpochReport, Hook
from metta_rl.core.progress import TrainingProgress

log = logging.getLogger(__name__)

STEP_METRIC = "agent_step"
FAMILIES = ("overview", "losses", "env", "timing", "system", "eval")


def has_api_key() -> bool:
    """``WANDB_API_KEY``, or the netrc entry that ``wandb login`` writes for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def effective_mode(config: WandbConfig) -> str:
    """The mode to run W&B in: ``online`` only with an API key, so no run ever blocks on a login
    prompt or a network it cannot reach."""
    if config.mode == "online" and not has_api_key():
        log.warning("wandb.mode=online but no W&B API key (WANDB_API_KEY or wandb login): logging offline")
        return "offline"
    return config.mode


def run_id_path(run_dir: Path) -> Path:
    return run_dir / "wandb" / "run_id"


def persistent_run_id(run_dir: Path) -> tuple[str, bool]:
    """The W&B run id of this run directory, made and saved on first use; and whether it existed."""
    path = run_id_path(run_dir)
    if path.exists():
        run_id = path.read_text().strip()
        if run_id:
            return run_id, True
    # W&B's own id format (8 lowercase letters and digits); its generator is not public API.
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id, False


class WandbHook(Hook):
    def __init__(self, config: WandbConfig) -> None:
        self.config = config
        self.run: Any = None
        self.resumed = False

    def on_train_start(self, *, progress: TrainingProgress, config: Any, run_dir: Any) -> None:
        import wandb

        if self.run is not None:  # a second start on the same hook: keep the open run
            return
        path = Path(run_dir.path)
        run_id, self.resumed = persistent_run_id(path)
        self.run = wandb.init(
            project=self.config.project,
            entity=self.config.entity,
            group=self.config.group,
            tags=list(self.config.tags),
            mode=effective_mode(self.config),
            name=path.name,
            id=run_id,
            resume="allow",
            dir=str(path),
            job_type="train",
            config=config.to_dict(),
            # W&B's own stdout capture would record every redraw of the live dashboard.
            settings=wandb.Settings(console="off"),
        )
        if self.resumed:
            log.info("wandb: continuing run %s from agent step %d", run_id, progress.agent_step)
        self.run.define_metric(STEP_METRIC)
        for family in FAMILIES:
            self.run.define_metric(f"{family}/*", step_metric=STEP_METRIC)
        self.run.define_metric("*", step_metric=STEP_METRIC)  # epoch, custom metrics, ...
        self.run.define_metric("eval/mean_return", step_metric=STEP_METRIC, summary="max,last")

    def on_epoch_end(self, *, progress: TrainingProgress, metrics: Mapping[str, float], report: EpochReport) -> None:
        if self.run is None:
            return
        data: dict[str, Any] = dict(metrics)
        data[STEP_METRIC] = progress.agent_step
        replay = getattr(report.eval, "replay_path", None) if report is not None else None
        if replay is not None and Path(replay).is_file():
            if Path(replay).suffix == ".gif":
                import wandb

                data["eval/replay"] = wandb.Video(str(replay))
            else:  # MettaGrid's own replay format (.json.z): a file of the run, not a video
                self.run.save(str(replay), base_path=str(Path(replay).parent), policy="now")
        self.run.log(data)

    def on_checkpoint(self, *, progress: TrainingProgress, path: Any) -> None:
        if self.run is None or not self.config.log_checkpoints:
            return
        import wandb

        artifact = wandb.Artifact(
            name=f"model-{self.run.id}",
            type="model",
            metadata={"agent_step": progress.agent_step, "epoch": progress.epoch, "checkpoint": Path(path).name},
        )
        # Files are copied to W&B's staging area now: the checkpoint folder may be pruned by
        # retention before an offline run is synced.
        artifact.add_dir(str(path))
        self.run.log_artifact(artifact, aliases=["latest", f"step-{progress.agent_step}"])

    def on_train_end(self, *, progress: TrainingProgress, summary: dict[str, Any]) -> None:
        if self.run is not None:
            for key, value in summary.items():
                if isinstance(value, (int, float, str)) and not (isinstance(value, float) and math.isnan(value)):
                    self.run.summary[key] = value
        self.close()

    def on_failure(self) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=1)

    def close(self) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.finish()
