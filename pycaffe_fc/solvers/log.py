"""Caffe's log lines: glog's prefix and the messages ``tools/extra/parse_log.py`` reads.

Every line looks like glog's (``I1124 08:45:00.123456 12345 solver.cpp:239] Iteration 100 ...``):
severity letter, month and day, time with microseconds, thread id, the Caffe source file and line
that prints the same message, then the message. parse_log.py and extract_seconds.py parse exactly
this shape. The lines go to stderr (as ``GLOG_logtostderr=1``); ``GLOG_minloglevel`` (0 INFO,
1 WARNING, 2 ERROR) raises the threshold as it does for glog. Other fc-caffe modules that log through
``logging.getLogger("pycaffe_fc....")`` get the same prefix once the handler is installed.

Between two display lines a tqdm progress bar is shown, on a terminal only (never in a log file).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time

LOGGER_NAME = "pycaffe_fc"
_installed = False
_bar = None  # the active tqdm bar, if any


class GlogFormatter(logging.Formatter):
    """``Lmmdd hh:mm:ss.uuuuuu  tid file:line] msg``, as glog writes it."""

    _letters = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E",
                logging.CRITICAL: "F"}

    def format(self, record: logging.LogRecord) -> str:
        t = record.created
        lt = time.localtime(t)
        usec = int((t - int(t)) * 1e6)
        tid = os.getpid() if threading.current_thread() is threading.main_thread() else threading.get_native_id()
        src = getattr(record, "caffe_src", None) or f"{record.filename}:{record.lineno}"
        letter = self._letters.get(record.levelno, "I")
        prefix = f"{letter}{lt.tm_mon:02d}{lt.tm_mday:02d} {time.strftime('%H:%M:%S', lt)}.{usec:06d} {tid:5d} {src}] "
        return prefix + record.getMessage()


class _StderrHandler(logging.Handler):
    """Writes to the *current* sys.stderr (so redirections and pytest capture see it), around the
    progress bar when one is shown."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            stream = sys.stderr
            if _bar is not None:
                from tqdm import tqdm
                with tqdm.external_write_mode(file=stream):
                    stream.write(line)
            else:
                stream.write(line)
            stream.flush()
        except Exception:  # pragma: no cover - logging must never break training
            self.handleError(record)


def install() -> logging.Logger:
    """Give the ``pycaffe_fc`` logger glog-style output on stderr, once, unless the application
    configured that logger itself."""
    global _installed
    logger = logging.getLogger(LOGGER_NAME)
    if not _installed and not logger.handlers:
        h = _StderrHandler()
        h.setFormatter(GlogFormatter())
        logger.addHandler(h)
        logger.propagate = False
        levels = {"0": logging.INFO, "1": logging.WARNING, "2": logging.ERROR, "3": logging.CRITICAL}
        logger.setLevel(levels.get(os.environ.get("GLOG_minloglevel", "0"), logging.INFO))
    _installed = True
    return logger


def info(msg: str, src: str) -> None:
    """LOG(INFO) << msg, attributed to Caffe's ``src`` ("solver.cpp:239")."""
    install().info(msg, extra={"caffe_src": src})


def warning(msg: str, src: str) -> None:
    install().warning(msg, extra={"caffe_src": src})


def fmt(x) -> str:
    """A number as C++'s ``ostream << float`` prints it (6 significant digits)."""
    x = float(x)
    if x != x:
        return "nan"
    if x in (float("inf"), float("-inf")):
        return "inf" if x > 0 else "-inf"
    return f"{x:.6g}"


class ProgressBar:
    """A tqdm bar over training iterations, shown only when stderr is a terminal."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True) -> None:
        global _bar
        self.bar = None
        if not enabled or not _isatty() or total <= 0:
            return
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover
            return
        self.bar = tqdm(total=total, initial=initial, file=sys.stderr, leave=False, unit="iter",
                        dynamic_ncols=True)
        _bar = self.bar

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set_loss(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss = {fmt(loss)}", refresh=False)

    def close(self) -> None:
        global _bar
        if self.bar is not None:
            self.bar.close()
            if _bar is self.bar:
                _bar = None
            self.bar = None


def _isatty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
