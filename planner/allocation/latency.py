"""Measured layer latency per sparsity pattern: the table ``benchmarks/structured.py
--write-table`` writes, and how a layer's latency is read off it.

The file is JSON::

    {"format": "sparsity-latency/1", "batch": 64, "threads": 1, "machine": "...",
     "entries": [{"pattern": "dense", "rows": 300, "cols": 784, "density": 1.0, "ms": 0.41,
                  "kernel": "dense"}, ...]}

``pattern`` is ``dense`` (density 1: the layer kept dense, whatever pattern it would have),
``unstructured``, ``bcr:RxC`` or ``N:M``; ``ms`` is the fastest kernel the benchmark has for the
pattern at that shape and density (``kernel`` names it: ``dense``, ``csr``, ``bcr-bmm``...),
one forward pass of ``batch`` samples on ``threads`` torch threads. The benchmark makes the
entries monotone (``ms`` is the least measured at that density or above, the raw figure stays
as ``measured_ms``, which the planner does not read).

A layer of ``rows x cols`` at density ``d`` under a pattern (:meth:`LatencyTable.ms`):

* per table shape of that pattern, the time per weight (ms / (rows * cols)) is piecewise
  linear in the density between the measured densities, with the shape's dense time at
  density 1, and constant below the lowest measured density (no extrapolation towards 0);
* across shapes, that time per weight is piecewise linear in ln(rows * cols) between the two
  table shapes whose sizes bracket the layer's, and the nearest one's outside them;
* the layer's latency is that time per weight times its rows * cols. A layer kept dense
  (density 1) costs the ``dense`` entries' time read the same way.

The planner's default table (``planner/allocation/latency.json``) was measured on this
project's machine (its ``machine`` field); measure yours with ``python benchmarks/structured.py
--write-table FILE``.
"""

from __future__ import annotations

import bisect
import json
import math
import os
from dataclasses import dataclass
from importlib import resources

from planner.errors import LatencyTableError

FORMAT = "sparsity-latency/1"
DEFAULT_NAME = "latency.json"


@dataclass(frozen=True)
class LatencyEntry:
    pattern: str
    rows: int
    cols: int
    density: float
    ms: float
    kernel: str = ""


class LatencyTable:
    """Measured latencies, read by :meth:`ms` (interpolated as the module docstring says)."""

    def __init__(self, entries, *, batch: int | None = None, threads: int | None = None, machine: str = "",
                 source: str = ""):
        self.entries = list(entries)
        self.batch, self.threads, self.machine, self.source = batch, threads, machine, source
        # pattern -> {(rows, cols): sorted [(density, ms per weight)]}
        self._curves: dict[str, dict[tuple[int, int], list[tuple[float, float]]]] = {}
        for e in self.entries:
            curve = self._curves.setdefault(e.pattern, {}).setdefault((e.rows, e.cols), [])
            curve.append((e.density, e.ms / (e.rows * e.cols)))
        for shapes in self._curves.values():
            for key, curve in shapes.items():
                curve.sort()
                densities = [d for d, _ in curve]
                if len(set(densities)) != len(densities):
                    raise LatencyTableError(f"{self.label}: two entries for one shape {key[0]}x{key[1]} and "
                                            "density")
        if "dense" not in self._curves:
            raise LatencyTableError(f"{self.label}: no 'dense' entries (the layers kept dense)")

    @property
    def label(self) -> str:
        return f"latency table {self.source}" if self.source else "the latency table"

    @property
    def patterns(self) -> list[str]:
        return sorted(self._curves)

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, data, source: str = "") -> "LatencyTable":
        where = f"latency table {source}".strip()
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LatencyTableError(f"{where}: not a latency table (needs \"format\": \"{FORMAT}\")")
        raw = data.get("entries")
        if not isinstance(raw, list) or not raw:
            raise LatencyTableError(f"{where}: 'entries' must be a non-empty list")
        entries = []
        for i, e in enumerate(raw):
            try:
                pattern, rows, cols = e["pattern"], e["rows"], e["cols"]
                density, ms = float(e["density"]), float(e["ms"])
            except (KeyError, TypeError, ValueError):
                raise LatencyTableError(f"{where}: entries[{i}] needs pattern, rows, cols, density and ms") from None
            if (not isinstance(pattern, str) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                        for v in (rows, cols))):
                raise LatencyTableError(f"{where}: entries[{i}]: pattern must be a name, rows and cols positive "
                                        "integers")
            if not (0.0 < density <= 1.0) or not math.isfinite(ms) or ms <= 0:
                raise LatencyTableError(f"{where}: entries[{i}]: density must lie in (0, 1] and ms be a positive "
                                        "number")
            if pattern == "dense" and density != 1.0:
                raise LatencyTableError(f"{where}: entries[{i}]: a dense entry has density 1")
            entries.append(LatencyEntry(pattern, rows, cols, density, ms, str(e.get("kernel", ""))))
        return cls(entries, batch=data.get("batch"), threads=data.get("threads"), machine=str(data.get("machine", "")),
                   source=source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise LatencyTableError(f"cannot read latency table {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise LatencyTableError(f"latency table {path} is not UTF-8 text") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise LatencyTableError(f"latency table {path}: invalid JSON ({exc})") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def default(cls) -> "LatencyTable":
        """The table measured on this project's machine (shipped with the package)."""
        text = resources.files("planner.allocation").joinpath(DEFAULT_NAME).read_text("utf-8")
        return cls.from_dict(json.loads(text), "built-in (" + DEFAULT_NAME + ")")

    def to_dict(self) -> dict:
        return {"format": FORMAT, "batch": self.batch, "threads": self.threads, "machine": self.machine,
                "entries": [{"pattern": e.pattern, "rows": e.rows, "cols": e.cols, "density": e.density,
                             "ms": e.ms, "kernel": e.kernel} for e in self.entries]}

    # ------------------------------------------------------------------ lookup
    def require(self, pattern: str) -> None:
        if pattern not in self._curves:
            raise LatencyTableError(
                f"{self.label} has no entries for pattern {pattern} (it has: "
                f"{', '.join(p for p in self.patterns if p != 'dense')}); measure it with "
                "python benchmarks/structured.py --write-table FILE (--block B for bcr:BxB, --nm N:M)")

    def ms(self, pattern: str, rows: int, cols: int, density: float) -> float:
        """The latency (ms) of a rows x cols layer at ``density`` under ``pattern``."""
        if density >= 1.0:
            pattern, density = "dense", 1.0
        self.require(pattern)
        shapes = self._curves[pattern]
        dense = self._curves["dense"]

        def per_weight(shape) -> float:
            curve = list(shapes[shape])
            if pattern != "dense" and shape in dense and curve[-1][0] < 1.0:
                curve.append((1.0, dense[shape][0][1]))
            return _piecewise([d for d, _ in curve], [v for _, v in curve], density)

        by_size = sorted(shapes, key=lambda s: (s[0] * s[1], s))
        sizes = [math.log(r * c) for r, c in by_size]
        values = [per_weight(s) for s in by_size]
        return _piecewise(sizes, values, math.log(rows * cols)) * rows * cols


def _piecewise(xs, ys, x) -> float:
    """Linear between the points (xs ascending; equal xs: the first), constant outside them."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    if x1 == x0:
        return y0
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def resolve(table) -> LatencyTable:
    """A :class:`LatencyTable`, a path to one, or None (the built-in table)."""
    if table is None:
        return LatencyTable.default()
    if isinstance(table, LatencyTable):
        return table
    if isinstance(table, (str, os.PathLike)):
        return LatencyTable.load(table)
    raise LatencyTableError(f"a latency table is a LatencyTable or a path, got {type(table).__name__}")
