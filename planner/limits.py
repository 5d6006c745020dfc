"""The sizes and values the planner supports, enforced up front with a message naming the limit.

They are sanity bounds, far above any model people prune today, that keep a typo (a width of
10^9, a grid of a million) from running until the machine kills it, and keep every integer the
solvers see inside their 64-bit (seeds: 32-bit) range.
"""

from __future__ import annotations

import math

from planner.errors import LimitError

#: any side of a weight matrix (a hidden width, an input size, in_channels * kh * kw)
MAX_WIDTH = 100_000
#: hidden layers in the bound's chain
MAX_HIDDEN_LAYERS = 1_000
#: candidate keep-counts per layer (--grid)
MAX_GRID = 1_000
#: seeds: OR-Tools takes a 32-bit seed
MAX_SEED = 2**31 - 1
#: solver threads and sampling processes
MAX_THREADS = 256
#: random points seeding the region enumeration (count-regions --samples)
MAX_REGION_SAMPLES = 1_000_000
#: seconds the integer program may take unless told otherwise (--time-limit; inf lifts it)
DEFAULT_TIME_LIMIT = 60.0


def check_int(value, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise LimitError(f"{what} must be an integer, got {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise LimitError(f"{what} must be in [{low}, {high}], got {value}")
    return value


def check_time_limit(value, what: str = "time limit") -> float | None:
    """Seconds > 0, or None / inf for no limit; NaN and non-positive values are refused."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise LimitError(f"{what} must be a number of seconds, got {value!r}") from None
    if math.isnan(seconds) or seconds <= 0:
        raise LimitError(f"{what} must be a positive number of seconds (inf for none), got {value!r}")
    return None if math.isinf(seconds) else seconds
