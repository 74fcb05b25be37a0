"""How long the BLAS's idle threads spin: settled before numpy loads OpenBLAS.

After each GEMM, OpenBLAS keeps its worker threads spinning for about 2^28 cycles (a tenth of a
second) before they sleep. Caffe's CPU path does not mind, since everything between its GEMMs
runs on one core anyway; ours runs im2col, col2im and pooling on worker threads too (see
``pycaffe_fc.threads``), and a spinning BLAS thread would take the core they need. So, unless
the user chose a value, ``OPENBLAS_THREAD_TIMEOUT`` is set to its minimum (2^4 cycles) while
that can still take effect: OpenBLAS reads it once, when numpy first loads it.
"""
from __future__ import annotations

import os
import sys

#: OpenBLAS's smallest accepted timeout exponent (cycles = 2**value)
SHORT_SPIN = 4
#: at most this exponent (~1 ms at 3 GHz) counts as short enough for the worker threads
SHORT_ENOUGH = 20


def configure() -> bool:
    """Ask for a short spin if numpy is not loaded yet; True when the spin is short."""
    value = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "").strip()
    if value:
        return value.isdigit() and int(value) <= SHORT_ENOUGH
    if "numpy" in sys.modules:
        return False  # too late: the BLAS already read its settings
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(SHORT_SPIN)
    return True


short_spin = configure()
