"""Console output as a hook: a rich live table on a terminal, plain log lines otherwise."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from metta_rl.hooks import Hook
from metta_rl.progress import TrainingProgress


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _eta(progress: TrainingProgress, sps: float) -> str:
    left = max(0, progress.total_timesteps - progress.agent_step)
    if sps <= 0:
        return "-"
    seconds = int(left / sps)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ConsoleHook(Hook):
    def __init__(self, *, mode: str = "auto", interval_s: float = 1.0, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "rich" if self.stream.isatty() else "plain"
        self.mode = mode
        self.interval_s = interval_s
        self._last = -math.inf
        self._live: Any = None
        self._start = time.perf_counter()
        self._rate_steps = 0
        self._rate_time = self._start

    def on_train_start(self, *, progress: TrainingProgress, config: Any, run_dir: Any) -> None:
        self._start = time.perf_counter()
        if self.mode == "off":
            return
        where = f" -> {run_dir.path}" if run_dir is not None else ""
        self._print(f"training {config.env.name} ({config.env.id}) for {progress.total_timesteps:,} agent steps{where}")
        if self.mode == "rich":
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=self.stream), refresh_per_second=4, transient=False)
            self._live.start()

    def on_epoch_end(self, *, progress: TrainingProgress, metrics: dict[str, float]) -> None:
        if self.mode == "off":
            return
        now = time.perf_counter()
        final = progress.done
        if now - self._last < self.interval_s and not final and "eval/mean_return" not in metrics:
            return
        # Throughput since the last report, smoother than one epoch's.
        sps = (progress.agent_step - self._rate_steps) / max(now - self._rate_time, 1e-9)
        self._rate_steps, self._rate_time, self._last = progress.agent_step, now, now
        if self._live is not None:
            self._live.update(self._table(progress, metrics, sps))
        else:
            self._print(self._line(progress, metrics, sps))

    def on_train_end(self, *, progress: TrainingProgress, summary: dict[str, Any]) -> None:
        self.close()
        if self.mode == "off":
            return
        self._print(
            "done: "
            + " ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in summary.items() if not isinstance(v, dict))
        )

    def on_failure(self, *, progress: TrainingProgress, error: BaseException) -> None:  # noqa: ARG002
        self.close()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    # ------------------------------------------------------------------ rendering
    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _line(self, progress: TrainingProgress, m: dict[str, float], sps: float) -> str:
        parts = [
            f"epoch={progress.epoch}",
            f"step={progress.agent_step}/{progress.total_timesteps}",
            f"sps={sps:.0f}",
            f"eta={_eta(progress, sps)}",
            f"return={_fmt(m.get('overview/episode_return', math.nan))}",
            f"policy_loss={_fmt(m.get('losses/policy_loss', math.nan))}",
            f"value_loss={_fmt(m.get('losses/value_loss', math.nan))}",
            f"entropy={_fmt(m.get('losses/entropy', math.nan))}",
            f"kl={_fmt(m.get('losses/approx_kl', math.nan))}",
            "time(env/inf/upd/other)="
            + "/".join(f"{m.get(f'timing/{k}', 0.0):.2f}" for k in ("env", "inference", "update", "other")),
        ]
        if "eval/mean_return" in m:
            parts.append(f"eval_return={_fmt(m['eval/mean_return'])}")
        return " ".join(parts)

    def _table(self, progress: TrainingProgress, m: dict[str, float], sps: float) -> Any:
        from rich.table import Table

        uptime = int(time.perf_counter() - self._start)
        table = Table(title=f"metta_rl  epoch {progress.epoch}  uptime {uptime // 60}m{uptime % 60:02d}s", expand=False)
        table.add_column("progress")
        table.add_column("value", justify="right")
        table.add_column("losses")
        table.add_column("value", justify="right")
        table.add_column("time split")
        table.add_column("share", justify="right")
        left = [
            ("steps", f"{progress.agent_step:,} / {progress.total_timesteps:,}"),
            ("SPS", f"{sps:,.0f}"),
            ("ETA", _eta(progress, sps)),
            ("episode return", _fmt(m.get("overview/episode_return", math.nan))),
            ("episode length", _fmt(m.get("overview/episode_length", math.nan))),
            ("eval return", _fmt(m.get("eval/mean_return", math.nan))),
        ]
        mid = [
            (k, _fmt(m.get(f"losses/{k}", math.nan)))
            for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "explained_variance")
        ]
        right = [(k, f"{m.get(f'timing/{k}', 0.0):.0%}") for k in ("env", "inference", "update", "other")]
        right += [("", "")] * (len(left) - len(right))
        for (a, b), (c, d), (e, f) in zip(left, mid, right):
            table.add_row(a, b, c, d, e, f)
        return table
