"""Checks of the options a user gives a reader, each raising one DataError that names the option and the fix;
and the memory available to a new array (`available_memory`), which the readers and the commands check requests
against before they allocate."""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from pathlib import Path

from .errors import DataError

MAX_LEVELS = 2**16  # 16-bit images: the most values per pixel any format here holds
MAX_CLASSES = 2**16  # labels index a class embedding of this many rows at most


def is_integer(value) -> bool:
    """An int or a numpy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer_in(value, name: str, low: int, high: int | None = None) -> int:
    """value, if it is an integer in low..high (no upper bound for high=None)."""
    if not is_integer(value) or value < low or (high is not None and value > high):
        bounds = f"an integer in {low}..{high}" if high is not None else f"an integer ≥ {low}"
        raise DataError(f"{name} must be {'a positive integer' if (low, high) == (1, None) else bounds}, "
                        f"got {value!r}")
    return value


def fraction(value, name: str, upper_open: bool = False) -> float:
    """value, if it is a number in [0, 1] ([0, 1) with upper_open)."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not number or not 0 <= value <= 1 or (upper_open and value == 1):
        raise DataError(f"{name} must be a number in [0, 1{')' if upper_open else ']'}, got {value!r}")
    return float(value)


def boolean(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise DataError(f"{name} must be true or false, got {value!r}")
    return value


def levels(value, name: str) -> int:
    """A number of pixel levels: an integer in 2..MAX_LEVELS."""
    return integer_in(value, name, 2, MAX_LEVELS)


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable on Linux; the physical memory elsewhere)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(needed: int, what: str, fix: str) -> None:
    """A DataError when `what` needs more bytes than are available, before any of it is allocated."""
    available = available_memory()
    if needed > available:
        raise DataError(f"{what} needs about {needed / 2**30:.3g} GiB of memory but {available / 2**30:.3g} GiB "
                        f"is available; {fix}")
