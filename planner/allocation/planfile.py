"""The plan: per-layer keep-counts with their provenance, and its versioned JSON file format."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from planner.errors import PlanFormatError
from planner.fileio import atomic_write_text

FORMAT_NAME = "sparsity-plan"
FORMAT_VERSION = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"


@dataclass
class PlanLayer:
    """One weight layer: keep ``keep`` of its ``rows * cols`` weights."""

    name: str
    rows: int
    cols: int
    keep: int
    frozen: bool = False
    in_bound: bool = False
    expected_rank: float | None = None

    @property
    def size(self) -> int:
        return self.rows * self.cols

    @property
    def density(self) -> float:
        return self.keep / self.size

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "rows": self.rows,
            "cols": self.cols,
            "keep": self.keep,
            "density": self.density,
            "frozen": self.frozen,
            "in_bound": self.in_bound,
        }
        if self.expected_rank is not None:
            d["expected_rank"] = round(self.expected_rank, 6)
        return d


@dataclass
class Plan:
    """A per-layer sparsity plan. ``objective`` holds the plan's log2 bound, the uniform plan's,
    the certificate and the rank model; ``solver`` the backend and its real status."""

    architecture: dict
    strategy: str
    target: dict
    layers: list[PlanLayer]
    input_dim: int | None = None
    objective: dict = field(default_factory=dict)
    solver: dict = field(default_factory=dict)
    seed: int = 0

    # ------------------------------------------------------------------ views
    @property
    def prunable(self) -> int:
        return sum(layer.size for layer in self.layers if not layer.frozen)

    @property
    def kept(self) -> int:
        return sum(layer.keep for layer in self.layers if not layer.frozen)

    @property
    def global_density(self) -> float:
        return self.kept / self.prunable if self.prunable else 1.0

    @property
    def log2_bound(self) -> float | None:
        return self.objective.get("log2_bound")

    def layer(self, name: str) -> PlanLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def densities(self) -> dict[str, float]:
        return {layer.name: layer.density for layer in self.layers}

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "architecture": self.architecture,
            "strategy": self.strategy,
            "target": self.target,
            "input_dim": self.input_dim,
            "kept": self.kept,
            "prunable": self.prunable,
            "global_density": self.global_density,
            "layers": [layer.to_dict() for layer in self.layers],
            "objective": self.objective,
            "solver": self.solver,
            "seed": self.seed,
        }

    def to_json(self) -> str:
        """Deterministic text: no timestamps or timings, fixed key order, trailing newline."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a crash leaves the old file or none, never a partial one."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PlanFormatError(f"not a plan file: invalid JSON ({exc})") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise PlanFormatError(f"cannot read plan {path}: {exc.strerror}") from None
        return cls.from_json(text)

    @classmethod
    def from_dict(cls, data: Any) -> "Plan":
        if not isinstance(data, dict):
            raise PlanFormatError("not a plan file: the top level must be a JSON object")
        fmt = data.get("format")
        if not isinstance(fmt, str) or not fmt.startswith(FORMAT_NAME + "/"):
            raise PlanFormatError(f"not a plan file: 'format' must be '{FORMAT}', got {fmt!r}")
        try:
            version = int(fmt.split("/", 1)[1])
        except ValueError:
            raise PlanFormatError(f"not a plan file: bad format version in {fmt!r}") from None
        if version > FORMAT_VERSION:
            raise PlanFormatError(
                f"plan format {fmt} is newer than this sparsity-planner reads ({FORMAT}); upgrade it"
            )
        layers_raw = _need(data, "layers", list)
        if not layers_raw:
            raise PlanFormatError("plan has no layers")
        layers, names = [], set()
        for i, raw in enumerate(layers_raw):
            where = f"layers[{i}]"
            if not isinstance(raw, dict):
                raise PlanFormatError(f"{where} must be an object")
            name = _need(raw, "name", str, where)
            if name in names:
                raise PlanFormatError(f"{where}: duplicate layer name {name!r}")
            names.add(name)
            rows = _positive_int(raw, "rows", where)
            cols = _positive_int(raw, "cols", where)
            keep = _need(raw, "keep", int, where)
            if not 0 <= keep <= rows * cols:
                raise PlanFormatError(f"{where} ({name}): keep {keep} outside [0, {rows * cols}]")
            if "density" in raw:
                density = raw["density"]
                if not isinstance(density, (int, float)) or abs(density - keep / (rows * cols)) > 1e-9:
                    raise PlanFormatError(
                        f"{where} ({name}): density {density!r} does not match keep/size = {keep / (rows * cols)!r}"
                    )
            frozen = raw.get("frozen", False)
            in_bound = raw.get("in_bound", False)
            if not isinstance(frozen, bool) or not isinstance(in_bound, bool):
                raise PlanFormatError(f"{where} ({name}): 'frozen' and 'in_bound' must be true or false")
            er = raw.get("expected_rank")
            if er is not None and not isinstance(er, (int, float)):
                raise PlanFormatError(f"{where} ({name}): 'expected_rank' must be a number")
            layers.append(PlanLayer(name, rows, cols, keep, frozen, in_bound, er))
        architecture = _need(data, "architecture", dict)
        target = _need(data, "target", dict)
        strategy = _need(data, "strategy", str)
        objective = data.get("objective", {})
        solver = data.get("solver", {})
        if not isinstance(objective, dict) or not isinstance(solver, dict):
            raise PlanFormatError("'objective' and 'solver' must be objects")
        seed = data.get("seed", 0)
        input_dim = data.get("input_dim")
        if not isinstance(seed, int) or (input_dim is not None and not isinstance(input_dim, int)):
            raise PlanFormatError("'seed' and 'input_dim' must be integers")
        return cls(architecture, strategy, target, layers, input_dim, objective, solver, seed)


def _need(obj: dict, key: str, typ, where: str = "plan"):
    if key not in obj:
        raise PlanFormatError(f"{where}: missing '{key}'")
    value = obj[key]
    if typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, typ)
    if not ok:
        raise PlanFormatError(f"{where}: '{key}' must be {typ.__name__}, got {type(value).__name__}")
    return value


def _positive_int(obj: dict, key: str, where: str) -> int:
    value = _need(obj, key, int, where)
    if value <= 0:
        raise PlanFormatError(f"{where}: '{key}' must be positive, got {value}")
    return value
