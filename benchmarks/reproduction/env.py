"""The machine the numbers were measured on: CPU, cores, BLAS, versions, commit."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def numpy_blas() -> str:
    """numpy's BLAS as its build configuration names it (e.g. scipy-openblas 0.3.x)."""
    import numpy as np
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        name = blas.get("name", "?")
        version = blas.get("version", "")
        extra = blas.get("openblas configuration", "")
        return f"{name} {version}".strip() + (f" ({extra})" if extra else "")
    except Exception:  # noqa: BLE001 - older numpy: show_config has no dicts mode
        return "unknown"


def git_commit(root: str) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                               text=True, timeout=10)
        commit = out.stdout.strip() or "unknown"
        return commit + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def describe(root: str) -> dict[str, Any]:
    """Everything the report states about where and with what it ran."""
    import numpy as np
    try:
        import mpi4py
        mpi = f"mpi4py {mpi4py.__version__}"
        # in a child process: importing mpi4py.MPI here would initialise MPI in the parent
        out = subprocess.run([sys.executable, "-c", "from mpi4py import MPI; "
                              "print(MPI.Get_library_version().splitlines()[0])"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip():
            mpi += f", {out.stdout.strip()}"
    except ImportError:
        mpi = "mpi4py not installed"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "blas": numpy_blas(),
        "mpi": mpi,
        "platform": platform.platform(),
        "commit": git_commit(root),
        "loadavg_at_start": [round(x, 2) for x in load],
        "omp_threads": os.environ.get("OMP_NUM_THREADS") or os.environ.get("OPENBLAS_NUM_THREADS") or "default",
    }
