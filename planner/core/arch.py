"""Architectures: input size, ReLU hidden widths and output size of an MLP."""

from __future__ import annotations

from dataclasses import dataclass

from planner.errors import ArchitectureError, LimitError
from planner.limits import MAX_HIDDEN_LAYERS, MAX_WIDTH

#: Named architectures from the paper, usable wherever ``--arch`` takes a list.
PRESETS: dict[str, tuple[int, ...]] = {
    "lenet-300-100": (784, 300, 100, 10),
    "mnist-2x100": (784, 100, 100, 10),
    "mnist-2x400": (784, 400, 400, 10),
    "cifar-2x400": (3072, 400, 400, 10),
    "lenet5-fc": (400, 120, 84, 10),
    "alexnet-fc": (1024, 4096, 4096, 10),
}


@dataclass(frozen=True)
class Architecture:
    """A fully connected ReLU network: ``input_size -> hidden... -> output_size``.

    Hidden layers are ReLU layers and enter the linear-region bound; the output layer does not.
    """

    input_size: int
    hidden: tuple[int, ...]
    output_size: int

    def __post_init__(self) -> None:
        sizes = (self.input_size, *self.hidden, self.output_size)
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, int) or s <= 0:
                raise ArchitectureError(f"layer sizes must be positive integers, got {s!r}")
        if max(sizes) > MAX_WIDTH:
            raise LimitError(f"layer sizes above {MAX_WIDTH} are not supported, got {max(sizes)}")
        if len(self.hidden) > MAX_HIDDEN_LAYERS:
            raise LimitError(f"at most {MAX_HIDDEN_LAYERS} hidden layers are supported, got {len(self.hidden)}")
        if len(self.hidden) < 1:
            raise ArchitectureError(
                "an architecture needs at least one hidden layer: input,hidden...,output "
                "(e.g. 784,300,100,10)"
            )

    @classmethod
    def from_sizes(cls, sizes: list[int] | tuple[int, ...]) -> "Architecture":
        sizes = tuple(sizes)
        if len(sizes) < 3:
            raise ArchitectureError(
                f"an architecture lists input size, hidden widths and output size "
                f"(at least 3 numbers), got {len(sizes)}: {','.join(map(str, sizes))}"
            )
        return cls(sizes[0], tuple(sizes[1:-1]), sizes[-1])

    @classmethod
    def parse(cls, text: str) -> "Architecture":
        """Parse ``"784,300,100,10"`` (``x`` also separates) or a preset name."""
        key = text.strip().lower()
        if key in PRESETS:
            return cls.from_sizes(PRESETS[key])
        parts = [p for p in key.replace("x", ",").split(",")]
        if not key or any(p == "" for p in parts):
            raise ArchitectureError(
                f"cannot read architecture {text!r}: expected comma-separated sizes like "
                f"784,300,100,10 or a preset ({', '.join(sorted(PRESETS))})"
            )
        sizes = []
        for p in parts:
            try:
                sizes.append(int(p.strip()))
            except ValueError:
                raise ArchitectureError(
                    f"cannot read architecture {text!r}: {p!r} is not an integer size"
                ) from None
        return cls.from_sizes(sizes)

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.input_size, *self.hidden, self.output_size)

    @property
    def weight_shapes(self) -> list[tuple[int, int]]:
        """(rows, cols) = (out, in) of every weight matrix, hidden layers first, output last."""
        s = self.sizes
        return [(s[i + 1], s[i]) for i in range(len(s) - 1)]

    @property
    def layer_names(self) -> list[str]:
        return [f"fc{i + 1}" for i in range(len(self.sizes) - 1)]

    def __str__(self) -> str:
        return ",".join(map(str, self.sizes))
