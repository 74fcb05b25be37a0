#!/usr/bin/env python3
"""Plot training logs to a PNG, as Caffe's tools/extra/plot_training_log.py (matplotlib).

    python tools/plot_training_log.py CHART_TYPE OUTPUT.png LOG [LOG ...]

Chart types:
    0: Test accuracy  vs. Iters        1: Test accuracy  vs. Seconds
    2: Test loss  vs. Iters            3: Test loss  vs. Seconds
    4: Train learning rate  vs. Iters  5: Train learning rate  vs. Seconds
    6: Train loss  vs. Iters           7: Train loss  vs. Seconds
Each log is one line, labelled with its file name.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parse_log import parse_log  # noqa: E402

CHARTS = {
    0: ("test", "accuracy", "NumIters"), 1: ("test", "accuracy", "Seconds"),
    2: ("test", "loss", "NumIters"), 3: ("test", "loss", "Seconds"),
    4: ("train", "LearningRate", "NumIters"), 5: ("train", "LearningRate", "Seconds"),
    6: ("train", "loss", "NumIters"), 7: ("train", "loss", "Seconds"),
}
LABELS = {"accuracy": "Test accuracy", "loss": "loss", "LearningRate": "Train learning rate",
          "NumIters": "Iters", "Seconds": "Seconds"}


def _column(rows, field: str) -> str | None:
    """The column for ``field``: exact, else the first whose name contains it (e.g. 'loss3/top-1')."""
    if not rows:
        return None
    keys = list(rows[0].keys())
    if field in keys:
        return field
    hint = "acc" if field == "accuracy" else field
    return next((k for k in keys[3:] if hint in k.lower()), None)


def plot_chart(chart_type: int, output: str, logs: list[str]) -> None:
    """Write one chart of the given type for every log to ``output`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if chart_type not in CHARTS:
        raise ValueError(f"chart type must be 0..7, got {chart_type}")
    which, field, xfield = CHARTS[chart_type]
    fig, ax = plt.subplots(figsize=(8, 5))
    plotted = 0
    for log in logs:
        train, test = parse_log(log)
        rows = train if which == "train" else test
        col = _column(rows, field)
        if col is None:
            print(f"plot_training_log.py: {log}: no {which} '{field}' values", file=sys.stderr)
            continue
        ax.plot([r[xfield] for r in rows], [r[col] for r in rows], marker=".", linewidth=1,
                label=os.path.basename(log))
        plotted += 1
    ylabel = LABELS[field] if field != "loss" else f"{which.capitalize()} loss"
    ax.set_xlabel(LABELS[xfield])
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} vs. {LABELS[xfield]}")
    ax.grid(True, alpha=0.3)
    if plotted:
        ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(output, format="png", dpi=100)
    plt.close(fig)
    if not plotted:
        raise ValueError(f"no {which} '{field}' values in any log")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3 or not argv[0].isdigit() or int(argv[0]) not in CHARTS:
        print(__doc__.strip(), file=sys.stderr)
        return 1
    chart, output, logs = int(argv[0]), argv[1], argv[2:]
    if not output.lower().endswith(".png"):
        print("plot_training_log.py: error: the output must be a .png file", file=sys.stderr)
        return 1
    missing = [log for log in logs if not os.path.isfile(log)]
    if missing:
        print(f"plot_training_log.py: error: {missing[0]}: no such file", file=sys.stderr)
        return 1
    try:
        plot_chart(chart, output, logs)
    except ValueError as e:
        print(f"plot_training_log.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
