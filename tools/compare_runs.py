#!/usr/bin/env python
"""Several runs' learning curves on one figure, against a reference line (a random policy's
return), from their ``metrics.jsonl`` alone: the README's curves are drawn with it.

    python tools/compare_runs.py runs/nav-s0 runs/nav-s1 --label s0 --label s1 \\
        --baseline 1.72 --baseline-label "random policy" --out docs/navigation.png

``--curve eval`` (the default) draws each run's eval mean return, ``--curve train`` its
training episode return (the rolling mean); ``--x wall`` puts wall-clock seconds on the x axis.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metta_rl.learning_curve import read_curves  # noqa: E402


def points(run: Path, curve: str, x: str) -> list[tuple[float, float]]:
    rows = read_curves(run, x="agent_step" if x == "steps" else "wall_seconds")[curve]
    return [(float(row[0]), float(row[1])) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--label", action="append", default=[], help="one per run, in order (default: the run's name)")
    parser.add_argument("--curve", choices=["eval", "train"], default="eval")
    parser.add_argument("--x", choices=["steps", "wall"], default="steps")
    parser.add_argument("--baseline", type=float, action="append", default=[], help="a horizontal reference line")
    parser.add_argument("--baseline-label", action="append", default=[])
    parser.add_argument("--xmax", type=float, default=None, help="draw points up to this x only")
    parser.add_argument("--title", default="")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.label and len(args.label) != len(args.runs):
        parser.error(f"--label given {len(args.label)} times for {len(args.runs)} runs: expected one per run")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.12, top=0.92)
    ax = fig.add_subplot()
    for i, run in enumerate(args.runs):
        data = [p for p in points(run, args.curve, args.x) if args.xmax is None or p[0] <= args.xmax]
        if not data:
            raise SystemExit(f"{run / 'metrics.jsonl'} has no {args.curve} returns")
        xs, ys = zip(*data)
        ax.plot(xs, ys, marker="o" if args.curve == "eval" else None, markersize=3, linewidth=1.3,
                label=args.label[i] if args.label else run.name)
    for j, value in enumerate(args.baseline):
        label = args.baseline_label[j] if j < len(args.baseline_label) else f"{value:g}"
        ax.axhline(value, color="gray", linestyle=("--", ":", "-.")[j % 3], linewidth=1.2, label=label)
    ax.set_xlabel("agent steps" if args.x == "steps" else "wall-clock seconds")
    ax.set_ylabel(("eval mean" if args.curve == "eval" else "training episode") + " return per agent")
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.grid(True, alpha=0.3)
    ax.set_title(args.title)
    ax.legend(loc="lower right")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
