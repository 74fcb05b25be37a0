"""CuPy 14 stand-in for tests (not CuPy): see tests/standin/cupy_standin/__init__.py."""
from cupy_standin import core as _core_impl

globals().update(_core_impl._EXPORTS)
__version__ = "14.2.0"

from cupy import cuda  # noqa: E402
from cupy import lib  # noqa: E402
from cupy import random  # noqa: E402


def get_default_memory_pool():
    return cuda._pool


def get_default_pinned_memory_pool():
    return cuda._pinned_pool


def is_available() -> bool:
    """cupy.is_available: whether a device can be used."""
    return cuda.is_available()


del _core_impl
