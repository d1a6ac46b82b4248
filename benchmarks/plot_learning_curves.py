"""Learning curves of recipe runs: test accuracy against wall-clock minutes.

    python benchmarks/plot_learning_curves.py RUN_DIR[=LABEL] ... --out docs/training/x.png

Reads each run folder's ``metrics.jsonl`` (one line per epoch) and ``config.json``. The
minutes are the cumulative training time of the epochs plus their evaluation
(``eval_time_s``; runs written before it was recorded count training time only, which
the legend says). Prints one line per run: final and best accuracy, minutes, epochs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curve(run: Path) -> tuple[list[float], list[float], bool]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    minutes, acc, total = [], [], 0.0
    with_eval = all("eval_time_s" in r for r in rows)
    for r in rows:
        total += r["epoch_time_s"] + r.get("eval_time_s", 0.0)
        minutes.append(total / 60)
        acc.append(100 * r["test_acc"])
    return minutes, acc, with_eval


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR=LABEL")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", default="CIFAR-10 test accuracy vs training time (2-core CPU)")
    p.add_argument("--goal", type=float, action="append", default=[], help="a goal line, %")
    args = p.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for spec in args.runs:
        folder, _, label = spec.partition("=")
        run = Path(folder).expanduser()
        minutes, acc, with_eval = curve(run)
        label = label or run.name
        note = "" if with_eval else " (training time only)"
        ax.plot(minutes, acc, marker=".", ms=3, label=f"{label}: {acc[-1]:.1f} %{note}")
        print(
            f"{label}: final {acc[-1]:.2f} %, best {max(acc):.2f} %, {minutes[-1]:.1f} min, "
            f"{len(acc)} epochs{note}"
        )
    for g in args.goal:
        ax.axhline(g, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("wall-clock minutes (training + evaluation)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(args.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
