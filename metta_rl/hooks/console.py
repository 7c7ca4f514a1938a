"""Console output as a hook: a rich live dashboard on a terminal, plain log lines otherwise.

Plain mode prints one line per report, ``key=value`` tokens separated by spaces (parse with
:func:`parse_line`), at most one per ``logging.log_interval_s`` plus the final epoch and every
epoch with an evaluation. The live dashboard redraws at most :data:`MAX_REDRAWS_PER_S` times a
second, however fast epochs are.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, TextIO

from metta_rl.hooks import Hook
from metta_rl.core.progress import TrainingProgress, resumed_message, steps_per_second

MAX_REDRAWS_PER_S = 4
SPS_WINDOW_S = 10.0
TOP_ENV_STATS = 8
PHASES = ("env", "inference", "update", "other")
LOSSES = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "explained_variance")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _num(value: Any) -> str:
    """A number for a plain line: no thousands separators, ``nan`` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:.4g}"


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _eta(progress: TrainingProgress, sps: float) -> str:
    left = max(0, progress.total_timesteps - progress.agent_step)
    return _duration(left / sps) if sps > 0 else "-"


def parse_line(line: str) -> dict[str, str]:
    """A plain report line back into its fields (``step`` is ``done/total``)."""
    return dict(token.split("=", 1) for token in line.split())


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
        # (time, agent_step) of recent epochs: SPS is measured over the last SPS_WINDOW_S
        # seconds, wall clock (evaluation and hooks included), steady across eval epochs.
        self._samples: deque[tuple[float, int]] = deque()
        self.reports = 0
        # Latest value of every metric: eval and env stats arrive on some epochs only, and the
        # dashboard keeps showing them in between.
        self._latest: dict[str, float] = {}

    def on_train_start(
        self, *, progress: TrainingProgress, config: Any, run_dir: Any, resumed_from: Any = None
    ) -> None:
        self._start = time.perf_counter()
        self._samples = deque([(self._start, progress.agent_step)])
        if self.mode == "off":
            return
        where = f" -> {run_dir.path}" if run_dir is not None else ""
        target = config.trainer.target_return
        until = f"until eval return >= {target:g} or " if target is not None else "for "
        self._print(f"training {config.env.name} ({config.env.id}) {until}{progress.total_timesteps:,} agent steps{where}")
        if resumed_from is not None:
            self._print(resumed_message(resumed_from, progress))
        if self.mode == "rich":
            from rich.console import Console
            from rich.live import Live

            # No refresh thread: we redraw on updates only, rate-limited below.
            self._live = Live(console=Console(file=self.stream), auto_refresh=False, transient=False)
            self._live.start()

    def on_epoch_end(self, *, progress: TrainingProgress, metrics: Mapping[str, float]) -> None:
        if self.mode == "off":
            return
        self._latest.update(metrics)
        now = time.perf_counter()
        self._samples.append((now, progress.agent_step))
        while len(self._samples) > 2 and now - self._samples[1][0] >= SPS_WINDOW_S:
            self._samples.popleft()
        interval = self.interval_s if self._live is None else max(self.interval_s, 1.0 / MAX_REDRAWS_PER_S)
        forced = progress.done or (self._live is None and "eval/mean_return" in metrics)
        if now - self._last < interval and not forced:
            return
        since, step0 = self._samples[0]
        sps = steps_per_second(progress.agent_step - step0, now - since)
        self._last = now
        self.reports += 1
        if self._live is not None:
            self._live.update(self._dashboard(progress, self._latest, sps), refresh=True)
        else:
            self._print(self._line(progress, metrics, sps))

    def on_train_end(self, *, progress: TrainingProgress, summary: dict[str, Any]) -> None:
        self.close()
        if self.mode == "off":
            return
        self._print(
            "done: "
            + " ".join(
                f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in summary.items() if not isinstance(v, dict)
            )
        )

    def on_failure(self) -> None:
        self.close()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    # ------------------------------------------------------------------ rendering
    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _line(self, progress: TrainingProgress, m: Mapping[str, float], sps: float) -> str:
        fields: list[tuple[str, Any]] = [
            ("epoch", progress.epoch),
            ("step", f"{progress.agent_step}/{progress.total_timesteps}"),
            ("sps", round(sps)),
            ("eta", _eta(progress, sps)),
            ("uptime", _duration(time.perf_counter() - self._start)),
            ("return", m.get("overview/episode_return")),
        ]
        fields += [(name, m.get(f"losses/{name}")) for name in ("policy_loss", "value_loss", "entropy", "approx_kl")]
        fields += [(f"t_{k}", m.get(f"timing/{k}")) for k in PHASES]
        fields += [("cpu", m.get("system/cpu_percent")), ("rss_mb", m.get("system/rss_mb"))]
        if "eval/mean_return" in m:
            fields.append(("eval_return", m["eval/mean_return"]))
        return " ".join(f"{k}={v if isinstance(v, str) else _num(v)}" for k, v in fields)

    def _dashboard(self, progress: TrainingProgress, m: Mapping[str, float], sps: float) -> Any:
        from rich.console import Group
        from rich.table import Table

        uptime = time.perf_counter() - self._start
        title = f"metta_rl  epoch {progress.epoch}  uptime {_duration(uptime)}"
        main = Table(title=title, expand=False)
        for header, justify in (
            ("progress", "left"),
            ("", "right"),
            ("losses", "left"),
            ("", "right"),
            ("time split", "left"),
            ("", "right"),
        ):
            main.add_column(header, justify=justify)  # type: ignore[arg-type]
        done = f"{progress.agent_step:,} / {progress.total_timesteps:,} ({progress.fraction:.0%})"
        left = [
            ("steps", done),
            ("SPS", f"{sps:,.0f}"),
            ("ETA", _eta(progress, sps)),
            ("episode return", _fmt(m.get("overview/episode_return"))),
            ("episode length", _fmt(m.get("overview/episode_length"))),
            ("eval return", _fmt(m.get("eval/mean_return"))),
        ]
        mid = [(k, _fmt(m.get(f"losses/{k}"))) for k in LOSSES]
        right = [(k, f"{m.get(f'timing/{k}', 0.0):.0%}") for k in PHASES]
        right += [("CPU", _pct(m.get("system/cpu_percent"))), ("RAM", _mb(m.get("system/rss_mb")))]
        for (a, b), (c, d), (e, f) in zip(left, mid, right):
            main.add_row(a, b, c, d, e, f)
        env_stats = sorted((k, v) for k, v in m.items() if k.startswith("env/"))[:TOP_ENV_STATS]
        if not env_stats:
            return main
        env = Table(title="env stats", expand=False)
        env.add_column("stat")
        env.add_column("mean", justify="right")
        for key, value in env_stats:
            env.add_row(key.removeprefix("env/"), _fmt(value))
        return Group(main, env)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _mb(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:.1f} GB" if value >= 1024 else f"{value:.0f} MB"
