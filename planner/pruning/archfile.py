"""Architecture files: a CNN (or an MLP) written as a small YAML or JSON file instead of Python.

``--model cnn.yaml`` is accepted wherever ``--model package.module:factory`` is (``plan``,
``bound``, ``apply``, ``count-regions``, ``sensitivity``, ``compare``)::

    input: [1, 8, 8]            # one input without the batch dimension: C,H,W (or a length)
    layers:
      - conv2d: {out_channels: 8, kernel_size: 3, padding: 1}
      - relu
      - conv2d: {out_channels: 16, kernel_size: 3, padding: 1}
      - relu
      - maxpool2d: 2
      - flatten
      - linear: 64
      - relu
      - linear: 10

Layer kinds: ``conv2d`` (``out_channels``, ``kernel_size``, and optionally ``stride``,
``padding``, ``dilation``, ``groups``, ``bias``), ``linear`` (a width, or ``out_features`` and
``bias``), ``maxpool2d`` / ``avgpool2d`` (a kernel size, or ``kernel_size``, ``stride``,
``padding``), ``relu`` and ``flatten``: exactly the layers the bound knows (docs/theory.md
section 8). Sizes may be an integer or an ``[h, w]`` pair; every item may carry a ``name``
(default ``conv1``, ``relu1``, ``pool1``, ``flatten``, ``fc1``, ... in order). Input channels and
features follow from the shapes, which are checked before anything is built. The file is
validated with a JSON schema; every mistake is one :class:`~planner.errors.ArchitectureError`
naming the file and the layer.

The model is an ``nn.Sequential`` built under the caller's torch seed (``compare`` seeds it per
run), carrying the file's input shape as ``model.input_shape``, so ``--input-shape`` is not
needed; for an image input it starts with a reshape named ``input`` that also takes
flat rows (a data set's features, ``count-regions`` points) and reshapes them.
"""

from __future__ import annotations

import json
import os
from typing import Any

from planner.errors import ArchitectureError

#: the suffixes that make ``--model`` an architecture file rather than ``package.module:factory``
SUFFIXES = (".yaml", ".yml", ".json")

_SIZE = {"oneOf": [{"type": "integer", "minimum": 1},
                   {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2}]}
_PAD = {"oneOf": [{"type": "integer", "minimum": 0},
                  {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2}]}
_NAME = {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"}


def _kind(name: str, body: dict) -> dict:
    return {"type": "object", "properties": {name: body}, "required": [name], "additionalProperties": False,
            "minProperties": 1, "maxProperties": 1}


_CONV = {"type": "object", "additionalProperties": False, "required": ["out_channels", "kernel_size"],
         "properties": {"out_channels": {"type": "integer", "minimum": 1}, "kernel_size": _SIZE, "stride": _SIZE,
                        "padding": _PAD, "dilation": _SIZE, "groups": {"type": "integer", "minimum": 1},
                        "bias": {"type": "boolean"}, "name": _NAME}}
_LINEAR = {"oneOf": [{"type": "integer", "minimum": 1},
                     {"type": "object", "additionalProperties": False, "required": ["out_features"],
                      "properties": {"out_features": {"type": "integer", "minimum": 1}, "bias": {"type": "boolean"},
                                     "name": _NAME}}]}
_POOL = {"oneOf": [_SIZE, {"type": "object", "additionalProperties": False, "required": ["kernel_size"],
                           "properties": {"kernel_size": _SIZE, "stride": _SIZE, "padding": _PAD, "name": _NAME}}]}
_PLAIN = {"oneOf": [{"type": "null"}, {"type": "object", "additionalProperties": False, "properties": {"name": _NAME}}]}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "sparsity-planner architecture file",
    "type": "object",
    "additionalProperties": False,
    "required": ["input", "layers"],
    "properties": {
        "input": {"oneOf": [{"type": "integer", "minimum": 1},
                            {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1,
                             "maxItems": 3}]},
        "layers": {"type": "array", "minItems": 1, "items": {"oneOf": [
            {"enum": ["relu", "flatten"]},
            _kind("conv2d", _CONV), _kind("linear", _LINEAR), _kind("maxpool2d", _POOL), _kind("avgpool2d", _POOL),
            _kind("relu", _PLAIN), _kind("flatten", _PLAIN),
        ]}},
    },
}


def is_arch_file(spec: object) -> bool:
    """Whether ``--model`` names an architecture file (by its suffix) rather than a factory."""
    return isinstance(spec, str) and spec.lower().endswith(SUFFIXES)


def read(path: str) -> dict:
    """The architecture file at ``path``, parsed (YAML or JSON by suffix) and schema-checked."""
    if not os.path.isfile(path):
        raise ArchitectureError(f"architecture file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ArchitectureError(f"cannot read architecture file {path}: {exc}") from None
    try:
        if path.lower().endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except ValueError as exc:  # json.JSONDecodeError
        raise ArchitectureError(f"{path} is not valid JSON: {exc}") from None
    except Exception as exc:  # yaml.YAMLError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArchitectureError(f"{path} is not valid YAML: {first}") from None
    check(data, path)
    return data


def check(data: object, where: str = "architecture") -> None:
    """Schema errors as one line: the best-matching one, with where it is."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        at = "/".join(str(p) for p in error.absolute_path)
        hint = ""
        if len(error.absolute_path) >= 2 and error.absolute_path[0] == "layers":
            hint = (" (a layer is relu, flatten, or one of conv2d, linear, maxpool2d, avgpool2d with its "
                    "settings)")
        raise ArchitectureError(f"{where}: {'at ' + at + ': ' if at else ''}{_short(error.message)}{hint}")


def _short(message: str) -> str:
    return message if len(message) <= 160 else message[:157] + "..."


def _pair(value, default):
    if value is None:
        return (default, default)
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def layers(data: dict, where: str = "architecture") -> tuple[tuple[int, ...], list[tuple[str, str, dict, tuple]]]:
    """(input shape, [(name, kind, torch arguments, output shape)]): the shapes propagated and
    checked without torch; a layer that does not fit its input is one ArchitectureError."""
    check(data, where)
    shape = (data["input"],) if isinstance(data["input"], int) else tuple(data["input"])
    input_shape = shape
    counters: dict[str, int] = {}
    seen: set[str] = set()
    out = []
    for i, item in enumerate(data["layers"]):
        kind, body = (item, None) if isinstance(item, str) else next(iter(item.items()))
        body = body if isinstance(body, dict) else ({} if body is None else {"_size": body})
        stem = {"conv2d": "conv", "linear": "fc", "maxpool2d": "pool", "avgpool2d": "pool", "relu": "relu",
                "flatten": "flatten"}[kind]
        counters[stem] = counters.get(stem, 0) + 1
        name = body.get("name") or (stem if kind == "flatten" and counters[stem] == 1 else f"{stem}{counters[stem]}")
        if name in seen:
            raise ArchitectureError(f"{where}: layer {i} ({kind}): the name {name!r} is used twice")
        seen.add(name)
        at = f"{where}: layer {i} ({name}, {kind})"
        if kind == "conv2d":
            if len(shape) != 3:
                raise ArchitectureError(f"{at} needs a C,H,W input, it gets {_fmt(shape)}")
            k, s, p, d = (_pair(body.get("kernel_size"), 1), _pair(body.get("stride"), 1),
                          _pair(body.get("padding"), 0), _pair(body.get("dilation"), 1))
            groups = int(body.get("groups", 1))
            c_in, c_out = shape[0], int(body["out_channels"])
            if c_in % groups or c_out % groups:
                raise ArchitectureError(f"{at}: groups={groups} must divide the {c_in} input and {c_out} output "
                                        "channels")
            hw = tuple((shape[1 + j] + 2 * p[j] - d[j] * (k[j] - 1) - 1) // s[j] + 1 for j in range(2))
            args = {"in_channels": c_in, "out_channels": c_out, "kernel_size": k, "stride": s, "padding": p,
                    "dilation": d, "groups": groups, "bias": bool(body.get("bias", True))}
            shape = (c_out, *hw)
        elif kind in ("maxpool2d", "avgpool2d"):
            if len(shape) != 3:
                raise ArchitectureError(f"{at} needs a C,H,W input, it gets {_fmt(shape)}")
            k = _pair(body.get("kernel_size", body.get("_size")), 1)
            s, p = _pair(body.get("stride"), None), _pair(body.get("padding"), 0)
            s = k if s[0] is None else s
            if any(p[j] * 2 > k[j] for j in range(2)):
                raise ArchitectureError(f"{at}: padding {p} is more than half the kernel {k}")
            hw = tuple((shape[1 + j] + 2 * p[j] - k[j]) // s[j] + 1 for j in range(2))
            args = {"kernel_size": k, "stride": s, "padding": p}
            shape = (shape[0], *hw)
        elif kind == "linear":
            if len(shape) != 1:
                raise ArchitectureError(f"{at} needs a flat input, it gets {_fmt(shape)} (put a flatten before it)")
            width = int(body.get("out_features", body.get("_size", 0)))
            args = {"in_features": shape[0], "out_features": width, "bias": bool(body.get("bias", True))}
            shape = (width,)
        elif kind == "flatten":
            args = {}
            shape = (int(_prod(shape)),)
        else:  # relu
            args = {}
        if any(v <= 0 for v in shape):
            raise ArchitectureError(f"{at}: its output would be {_fmt(shape)}; the input is too small for it")
        out.append((name, kind, args, shape))
    return input_shape, out


def _prod(shape) -> int:
    n = 1
    for v in shape:
        n *= int(v)
    return n


def _fmt(shape) -> str:
    return ",".join(str(v) for v in shape)


def build(path_or_data, where: str | None = None):
    """The ``nn.Sequential`` of an architecture file (a path, or its parsed content), with the
    file's input shape as ``model.input_shape``. Weights come from torch's global generator:
    seed it before calling for a reproducible model."""
    from collections import OrderedDict

    import torch.nn as nn

    from planner.pruning.reshape import Reshape

    if isinstance(path_or_data, str):
        where = where or path_or_data
        data = read(path_or_data)
    else:
        data = path_or_data
        where = where or "architecture"
    input_shape, specs = layers(data, where)
    make = {"conv2d": nn.Conv2d, "linear": nn.Linear, "maxpool2d": nn.MaxPool2d, "avgpool2d": nn.AvgPool2d,
            "relu": nn.ReLU, "flatten": nn.Flatten}
    modules = [(name, make[kind](**args)) for name, kind, args, _ in specs]
    if len(input_shape) > 1:  # flat rows (a data set's features, count-regions' points) are reshaped
        modules.insert(0, ("input", Reshape(tuple(input_shape))))
    model = nn.Sequential(OrderedDict(modules))
    model.input_shape = tuple(input_shape)
    return model
