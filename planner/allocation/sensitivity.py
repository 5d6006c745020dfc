"""Measured layer sensitivity: what pruning one layer alone costs on a calibration set.

A :class:`SensitivityTable` holds, for every prunable layer and every measured keep-count, the
calibration loss and accuracy of the model with only that layer pruned (by a criterion) and the
dense model's loss and accuracy. ``plan --objective sensitivity`` minimizes the summed loss
increase, sum_l [loss_l(keep_l) - dense loss], under the budgets (:mod:`.secondary`).

The table is pure data (numpy only); :mod:`planner.pruning.sensitivity` measures it with torch.
Between two measured keep-counts the increase is interpolated linearly in ln(keep); outside the
measured range it is not defined (the planner never goes there).
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import math
import os
from dataclasses import dataclass, field

from planner.errors import PlannerError
from planner.fileio import atomic_write_text

FORMAT_NAME = "sparsity-sensitivity"
FORMAT_VERSION = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
#: measured points per halving of the density, and the lowest density measured (defaults)
DEFAULT_STEPS = 4
DEFAULT_MIN_DENSITY = 2.0 ** -10
#: losses are stored rounded to this many decimals, so that thread counts cannot change a table
ROUND_DECIMALS = 7


class SensitivityError(PlannerError, ValueError):
    """A sensitivity table is malformed, or does not fit the layers it is used for."""


def measured_keeps(size: int, steps: int = DEFAULT_STEPS, min_density: float = DEFAULT_MIN_DENSITY) -> list[int]:
    """The keep-counts measured for a layer of ``size`` weights: round(size * 2^(-i / steps))
    for i = 0, 1, ... while the density is at least ``min_density`` (at least one weight),
    ascending and without repeats. The first is ``size`` itself (density 1)."""
    if steps < 1:
        raise SensitivityError(f"steps per halving must be >= 1, got {steps}")
    if not 0.0 < min_density <= 1.0:
        raise SensitivityError(f"minimum density must be in (0, 1], got {min_density}")
    keeps = set()
    i = 0
    while True:
        d = 2.0 ** (-i / steps)
        if d < min_density * (1 - 1e-12):
            break
        keeps.add(max(1, int(round(d * size))))
        i += 1
    return sorted(keeps)


@dataclass
class LayerSensitivity:
    """One layer's measurements: ``loss[i]`` and ``accuracy[i]`` with only this layer pruned to
    ``keeps[i]`` weights (ascending; the last is the whole layer)."""

    name: str
    rows: int
    cols: int
    keeps: list[int]
    loss: list[float]
    accuracy: list[float]

    @property
    def size(self) -> int:
        return self.rows * self.cols

    def to_dict(self) -> dict:
        return {"name": self.name, "rows": self.rows, "cols": self.cols, "keeps": self.keeps,
                "loss": self.loss, "accuracy": self.accuracy}


@dataclass
class SensitivityTable:
    """Per-layer measured loss and accuracy; ``increase(name, keep)`` is the planner's cost."""

    layers: list[LayerSensitivity]
    dense_loss: float
    dense_accuracy: float
    criterion: str = "magnitude"
    samples: int = 0
    source: dict = field(default_factory=dict)  # model, weights, data: what was measured
    key: str = ""  # the cache key (a hash of model, weights, data and settings)

    def __post_init__(self) -> None:
        self._by_name = {layer.name: layer for layer in self.layers}

    def layer(self, name: str) -> LayerSensitivity:
        try:
            return self._by_name[name]
        except KeyError:
            raise SensitivityError(f"the sensitivity table has no layer {name!r} "
                                   f"(it has {', '.join(self._by_name) or 'none'})") from None

    def has(self, name: str) -> bool:
        return name in self._by_name

    def increase(self, name: str, keep: int) -> float:
        """Loss increase of pruning layer ``name`` alone to ``keep`` weights: measured where it
        was measured, linear in ln(keep) in between; outside the measured range an error."""
        layer = self.layer(name)
        ks = layer.keeps
        if not ks[0] <= keep <= ks[-1]:
            raise SensitivityError(f"layer {name}: keep {keep} is outside the measured range "
                                   f"[{ks[0]}, {ks[-1]}]; measure lower densities (--min-density)")
        i = bisect.bisect_left(ks, keep)
        if ks[i] == keep:
            return layer.loss[i] - self.dense_loss
        lo, hi = ks[i - 1], ks[i]
        t = (math.log(keep) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return (1 - t) * (layer.loss[i - 1] - self.dense_loss) + t * (layer.loss[i] - self.dense_loss)

    def check_layers(self, layers) -> None:
        """Refuse a table measured on another model: every given (name, rows, cols) must match."""
        for w in layers:
            layer = self.layer(w.name)
            if (layer.rows, layer.cols) != (w.rows, w.cols):
                raise SensitivityError(f"layer {w.name} is {w.rows}x{w.cols} but the sensitivity table "
                                       f"measured it as {layer.rows}x{layer.cols}")

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        return {"format": FORMAT, "criterion": self.criterion, "samples": self.samples, "source": self.source,
                "key": self.key, "dense_loss": self.dense_loss, "dense_accuracy": self.dense_accuracy,
                "layers": [layer.to_dict() for layer in self.layers]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_json())

    def to_csv(self) -> str:
        """One row per (layer, keep): density, loss, loss increase, accuracy."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["layer", "rows", "cols", "keep", "density", "loss", "loss_increase", "accuracy"])
        for layer in self.layers:
            for k, loss, acc in zip(layer.keeps, layer.loss, layer.accuracy):
                writer.writerow([layer.name, layer.rows, layer.cols, k, f"{k / layer.size:.6g}", f"{loss:.7f}",
                                 f"{loss - self.dense_loss:.7f}", f"{acc:.6f}"])
        return out.getvalue()

    @classmethod
    def from_dict(cls, data) -> "SensitivityTable":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise SensitivityError(f"not a sensitivity table: 'format' must be {FORMAT!r}, got {got!r}")
        try:
            layers = []
            for raw in data["layers"]:
                keeps = [int(k) for k in raw["keeps"]]
                loss = [float(v) for v in raw["loss"]]
                acc = [float(v) for v in raw["accuracy"]]
                rows, cols = int(raw["rows"]), int(raw["cols"])
                name = str(raw["name"])
                if not keeps or len(keeps) != len(loss) or len(keeps) != len(acc):
                    raise SensitivityError(f"layer {name}: keeps, loss and accuracy need the same non-zero length")
                if keeps != sorted(set(keeps)) or keeps[0] < 1 or keeps[-1] > rows * cols:
                    raise SensitivityError(f"layer {name}: keeps must increase strictly within [1, {rows * cols}]")
                if not all(math.isfinite(v) for v in loss + acc):
                    raise SensitivityError(f"layer {name}: losses and accuracies must be finite")
                layers.append(LayerSensitivity(name, rows, cols, keeps, loss, acc))
            table = cls(layers, float(data["dense_loss"]), float(data["dense_accuracy"]),
                        str(data.get("criterion", "magnitude")), int(data.get("samples", 0)),
                        dict(data.get("source") or {}), str(data.get("key", "")))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, SensitivityError):
                raise
            raise SensitivityError(f"not a sensitivity table: {type(exc).__name__} {exc}") from None
        if len({layer.name for layer in layers}) != len(layers):
            raise SensitivityError("not a sensitivity table: duplicate layer names")
        return table

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SensitivityTable":
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except OSError as exc:
            raise SensitivityError(f"cannot read sensitivity table {path}: {exc.strerror}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise SensitivityError(f"{path} is not a sensitivity table (invalid JSON: {exc})") from None
        return cls.from_dict(data)


def rounded(value: float) -> float:
    return round(float(value), ROUND_DECIMALS)
