"""The models and training of the accuracy experiment: the ReLU MLP, SGD, accuracy and recall.

torch is imported inside each function, so importing this module stays cheap.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence


@functools.lru_cache(maxsize=None)
def _mlp_class():
    """The MLP class, built on first use so importing this module does not import torch."""
    import torch.nn as nn

    class MLP(nn.Module):
        """ReLU MLP with linear layers fc1..fcN, named as in the planner's ``--arch`` plans."""

        def __init__(self, sizes):
            super().__init__()
            self.sizes = tuple(sizes)
            for i in range(len(self.sizes) - 1):
                self.add_module(f"fc{i + 1}", nn.Linear(self.sizes[i], self.sizes[i + 1]))
            self.relu = nn.ReLU()

        def forward(self, x):
            x = x.flatten(1)
            n = len(self.sizes) - 1
            for i in range(1, n):
                x = self.relu(getattr(self, f"fc{i}")(x))
            return getattr(self, f"fc{n}")(x)

    return MLP


def make_mlp(sizes: Sequence[int], seed: int | None = None):
    """A fresh MLP (fc1..fcN); ``seed`` seeds torch's global generator first."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    return _mlp_class()(sizes)


def train(model, X, y, *, epochs: int, lr: float, batch_size: int, generator, momentum: float = 0.0,
          weight_decay: float = 0.0, on_epoch: Callable[[int], None] | None = None) -> None:
    """Minibatch SGD on cross-entropy (``weight_decay``: SGD's L2 penalty on every parameter);
    each epoch's order is a permutation from ``generator``."""
    import torch

    if epochs <= 0:
        return
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    n = len(X)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(X[idx]), y[idx])
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch + 1)


def evaluate(model, X, y, n_classes: int) -> tuple[float, list[float]]:
    """(accuracy, recall of every class) on ``X, y``."""
    import torch

    model.eval()
    with torch.no_grad():
        pred = model(X).argmax(dim=1)
    correct = pred == y
    acc = int(correct.sum()) / len(y) if len(y) else float("nan")
    recall = []
    for c in range(n_classes):
        in_c = y == c
        total = int(in_c.sum())
        recall.append(int(correct[in_c].sum()) / total if total else float("nan"))
    return acc, recall
