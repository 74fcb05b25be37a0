"""Caffe's training-log tools (tools/extra/parse_log.py, plot_training_log.py) as a library.

``parse_log(path)`` reads a Caffe (or fc-caffe) training log into (train rows, test rows): one row
per iteration with NumIters, Seconds (since the "Solving" line), LearningRate and every "Train net
output" or "Test net output" value; ``save_csv_files`` writes them as ``<log>.train`` and
``<log>.test``. Both glog prefixes are read: ``I1123 19:22:33.777912`` and the newer
``I20261123 19:22:33.777912`` that carries the year. ``plot_chart(type, png, logs)`` draws one of
Caffe's eight chart types (matplotlib). ``fc-caffe parse_log`` / ``plot_training_log`` and the
scripts under tools/ call these.
"""
from __future__ import annotations

import csv
import datetime
import math
import os
import re
import sys
from collections import OrderedDict

RE_ITERATION = re.compile(r"Iteration (\d+)")
RE_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+|nan|-?inf)")
RE_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+|nan|-?inf)")
RE_LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
RE_GLOG_TIME = re.compile(r"^[IWEF](\d{4})?(\d{2})(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d{1,6})")


def log_year(path: str) -> int:
    """The year a short glog timestamp belongs to: the log file's creation year (as Caffe does)."""
    return datetime.datetime.fromtimestamp(os.path.getctime(path)).year


def line_time(line: str, year: int) -> datetime.datetime | None:
    """The datetime of a glog line, or None for a line without the prefix."""
    m = RE_GLOG_TIME.match(line.strip())
    if not m:
        return None
    y = int(m.group(1)) if m.group(1) else year
    mo, d, h, mi, s = (int(g) for g in m.group(2, 3, 4, 5, 6))
    us = int(m.group(7).ljust(6, "0"))
    try:
        return datetime.datetime(y, mo, d, h, mi, s, us)
    except ValueError:
        return None


def _net_output(regex, row, rows, line, iteration, seconds, lr):
    """Caffe's parse_line_for_net_output: gather one iteration's outputs into one row."""
    m = regex.search(line)
    if m:
        if not row or row["NumIters"] != iteration:
            if row:
                rows.append(row)  # a row left incomplete (only happens at the start)
            row = OrderedDict([("NumIters", iteration), ("Seconds", seconds), ("LearningRate", lr)])
        row[m.group(2)] = float(m.group(3))
    if row and rows and len(row) == len(rows[0]):
        rows.append(row)  # complete: as many columns as the first row
        row = None
    return rows, row


def parse_log(path: str) -> tuple[list[OrderedDict], list[OrderedDict]]:
    """(train rows, test rows) of a training log."""
    year = log_year(path)
    train_rows: list[OrderedDict] = []
    test_rows: list[OrderedDict] = []
    train_row = test_row = None
    iteration = -1
    lr = math.nan
    with open(path, errors="replace") as f:
        lines = f.readlines()
    start = None
    first_solving = 0
    for i, line in enumerate(lines):
        if "Solving" in line:
            start = line_time(line, year)
            first_solving = i + 1
            break
    last = start
    for line in lines[first_solving:]:
        m = RE_ITERATION.search(line)
        if m:
            iteration = float(m.group(1))
        if iteration == -1:
            continue  # nothing before the first iteration
        t = line_time(line, year)
        if t is None:
            continue
        if last is not None and t.month < last.month:  # the log crossed new year
            year += 1
            t = line_time(line, year)
        if start is None:
            start = t
        last = t
        seconds = (t - start).total_seconds()
        m = RE_LEARNING_RATE.search(line)
        if m:
            lr = float(m.group(1))
        train_rows, train_row = _net_output(RE_TRAIN_OUTPUT, train_row, train_rows, line, iteration, seconds, lr)
        test_rows, test_row = _net_output(RE_TEST_OUTPUT, test_row, test_rows, line, iteration, seconds, lr)
    for rows in (train_rows, test_rows):
        # the learning rate is printed after the first outputs: take the second row's
        if len(rows) > 1:
            rows[0]["LearningRate"] = rows[1]["LearningRate"]
    return train_rows, test_rows


def write_csv(path: str, rows: list[OrderedDict], delimiter: str = ",", verbose: bool = False) -> bool:
    if not rows:
        if verbose:
            print(f"Not writing {path}; no lines to write")
        return False
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()), delimiter=delimiter, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    if verbose:
        print(f"Wrote {path}")
    return True


def save_csv_files(logfile: str, output_dir: str, train_rows, test_rows, delimiter: str = ",",
                   verbose: bool = False) -> tuple[str, str]:
    base = os.path.basename(logfile)
    train = os.path.join(output_dir, base + ".train")
    test = os.path.join(output_dir, base + ".test")
    write_csv(train, train_rows, delimiter, verbose)
    write_csv(test, test_rows, delimiter, verbose)
    return train, test



# -- plot_training_log ------------------------------------------------------------------------------
CHART_HELP = """Chart types:
    0: Test accuracy  vs. Iters        1: Test accuracy  vs. Seconds
    2: Test loss  vs. Iters            3: Test loss  vs. Seconds
    4: Train learning rate  vs. Iters  5: Train learning rate  vs. Seconds
    6: Train loss  vs. Iters           7: Train loss  vs. Seconds
Each log is one line, labelled with its file name."""

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


def plot_chart(chart_type: int, output: str, logs: list[str], warn=None) -> None:
    """Write one chart of the given type for every log to ``output`` (PNG); ``warn(msg)`` hears
    of a log without the values (default: stderr)."""
    if warn is None:
        def warn(msg: str) -> None:
            print(f"plot_training_log: {msg}", file=sys.stderr)
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
            warn(f"{log}: no {which} '{field}' values")
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


