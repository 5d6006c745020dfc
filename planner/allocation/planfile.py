"""The plan: per-layer keep-counts with their provenance, and its versioned JSON file format."""

from __future__ import annotations

import functools
import json
import os
from importlib import resources
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
    #: what decided the keep-count: "bound", "sensitivity", "global density", "frozen", a baseline
    rule: str | None = None
    why: str | None = None  # why the layer is outside the bound
    keep_neurons: int | None = None  # neuron plans: the layer's kept outputs (rows)
    #: pattern-aware plans: the layer's pattern (unstructured, bcr:RxC, N:M, dense) and latency
    pattern: str | None = None
    latency_ms: float | None = None

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
        if self.rule is not None:
            d["rule"] = self.rule
        if self.why:
            d["why"] = self.why
        if self.keep_neurons is not None:
            d["keep_neurons"] = self.keep_neurons
        if self.pattern is not None:
            d["pattern"] = self.pattern
        if self.latency_ms is not None:
            d["latency_ms"] = self.latency_ms
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
    granularity: str = "weights"  # "neurons": a neuron plan (planner.allocation.nodes)

    # ------------------------------------------------------------------ views
    @property
    def is_neurons(self) -> bool:
        return self.granularity == "neurons"

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
        d = {
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
        if self.granularity != "weights":  # weight plans keep their bytes
            d["granularity"] = self.granularity
        return d

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
        except RecursionError:
            raise PlanFormatError("not a plan file: JSON nested too deeply") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise PlanFormatError(f"cannot read plan {path}: {exc.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PlanFormatError(f"not a plan file: {path} is not UTF-8 text (byte {exc.start})") from None
        return cls.from_json(text)

    @classmethod
    def from_dict(cls, data: Any) -> "Plan":
        """A plan from its JSON object, checked against ``plan.schema.json`` and for what a schema
        cannot say (unique names, keep within the layer, density = keep / size)."""
        if not isinstance(data, dict):
            raise PlanFormatError("not a plan file: the top level must be a JSON object")
        fmt = data.get("format")
        if not isinstance(fmt, str) or not fmt.startswith(FORMAT_NAME + "/"):
            raise PlanFormatError(f"not a plan file: 'format' must be '{FORMAT}', got {fmt!r}")
        version = fmt.split("/", 1)[1]
        if not version.isdigit() or int(version) < 1:
            raise PlanFormatError(f"not a plan file: bad format version in {fmt!r} (versions start at 1)")
        if int(version) > FORMAT_VERSION:
            raise PlanFormatError(
                f"plan format {fmt} is newer than this sparsity-planner reads ({FORMAT}); upgrade it"
            )
        _check_schema(data)
        layers, names = [], set()
        for i, raw in enumerate(data["layers"]):
            name, rows, cols, keep = raw["name"], raw["rows"], raw["cols"], raw["keep"]
            where = f"layers[{i}] ({name})"
            if name in names:
                raise PlanFormatError(f"layers[{i}]: duplicate layer name {name!r}")
            names.add(name)
            if keep > rows * cols:
                raise PlanFormatError(f"{where}: keep {keep} outside [0, {rows * cols}]")
            if "density" in raw and abs(raw["density"] - keep / (rows * cols)) > 1e-9:
                raise PlanFormatError(
                    f"{where}: density {raw['density']!r} does not match keep/size = {keep / (rows * cols)!r}"
                )
            layers.append(PlanLayer(name, rows, cols, keep, raw.get("frozen", False), raw.get("in_bound", False),
                                    raw.get("expected_rank"), raw.get("rule"), raw.get("why"),
                                    raw.get("keep_neurons"), raw.get("pattern"), raw.get("latency_ms")))
        granularity = data.get("granularity", "weights")
        if granularity == "neurons":
            _check_neurons(layers)
        return cls(data["architecture"], data["strategy"], data["target"], layers, data.get("input_dim"),
                   data.get("objective", {}), data.get("solver", {}), data.get("seed", 0), granularity)


def _check_neurons(layers: list[PlanLayer]) -> None:
    """A neuron plan is a chain (rows of one layer = cols of the next) whose every layer keeps
    keep_neurons x (the previous layer's keep_neurons, or all inputs) weights, and whose output
    layer keeps every output."""
    prev = None
    for i, layer in enumerate(layers):
        where = f"layers[{i}] ({layer.name})"
        if layer.keep_neurons is None:
            raise PlanFormatError(f"{where}: a neuron plan needs keep_neurons on every layer")
        if layer.keep_neurons > layer.rows:
            raise PlanFormatError(f"{where}: keep_neurons {layer.keep_neurons} above the width {layer.rows}")
        if prev is not None and prev.rows != layer.cols:
            raise PlanFormatError(f"{where}: takes {layer.cols} inputs but {prev.name} has {prev.rows} outputs")
        inputs = layer.cols if prev is None else prev.keep_neurons
        if layer.keep != layer.keep_neurons * inputs:
            raise PlanFormatError(f"{where}: keep {layer.keep} is not keep_neurons x kept inputs = "
                                  f"{layer.keep_neurons} x {inputs}")
        if layer.frozen:
            raise PlanFormatError(f"{where}: a neuron plan has no frozen layers")
        prev = layer
    if layers[-1].keep_neurons != layers[-1].rows:
        raise PlanFormatError(f"layers[{len(layers) - 1}] ({layers[-1].name}): the output layer keeps all "
                              f"{layers[-1].rows} outputs")


@functools.lru_cache(maxsize=1)
def _validator():
    """The plan schema's validator; JSON integers are Python ints (not 3.0, not true)."""
    import jsonschema

    schema = json.loads(resources.files("planner.allocation").joinpath("plan.schema.json").read_text("utf-8"))
    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool))
    return jsonschema.validators.extend(base, type_checker=checker)(schema)


def _check_schema(data: dict) -> None:
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        raise PlanFormatError(f"not a valid plan file: {where or 'top level'}: {error.message}")
