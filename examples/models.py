"""Small model factories for ``--model examples.models:NAME`` (run from the repository root).

Every factory returns a fresh ``nn.Module`` with seeded initial weights.
"""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """ReLU MLP whose linear layers are named fc1, fc2, ... as in the planner's ``--arch`` plans."""

    def __init__(self, sizes=(784, 300, 100, 10)):
        super().__init__()
        self.sizes = tuple(sizes)
        for i in range(len(sizes) - 1):
            self.add_module(f"fc{i + 1}", nn.Linear(sizes[i], sizes[i + 1]))
        self.relu = nn.ReLU()

    def forward(self, x):
        x = x.flatten(1)
        layers = [getattr(self, f"fc{i + 1}") for i in range(len(self.sizes) - 1)]
        for layer in layers[:-1]:
            x = self.relu(layer(x))
        return layers[-1](x)


def mlp(sizes=(784, 300, 100, 10), seed: int = 0) -> MLP:
    """LeNet-300-100 by default."""
    torch.manual_seed(seed)
    return MLP(sizes)


def lenet_300_100(seed: int = 0) -> MLP:
    return mlp((784, 300, 100, 10), seed)


def digits_mlp(seed: int = 0) -> MLP:
    """64-100-100-10: the MLP of the README's experiments on scikit-learn's 8x8 digits."""
    return mlp((64, 100, 100, 10), seed)


class LeNet5(nn.Module):
    """LeNet-5 for 1x32x32 inputs (28x28 MNIST padded by 2): conv blocks, then 400-120-84-10."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def lenet5(seed: int = 0) -> LeNet5:
    torch.manual_seed(seed)
    return LeNet5()


class AlexNetHead(nn.Module):
    """The fully connected part of the paper's CIFAR AlexNet: 1024-4096-4096-10."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(x.flatten(1))


def alexnet_head(seed: int = 0) -> AlexNetHead:
    torch.manual_seed(seed)
    return AlexNetHead()


class DigitsCNN(nn.Module):
    """A small CNN for scikit-learn's 8x8 digits (input 1x8x8): two 3x3 convolutions, a 2x2
    max pool, then 256-64-10."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x.reshape(-1, 1, 8, 8)))


def digits_cnn(seed: int = 0) -> DigitsCNN:
    torch.manual_seed(seed)
    return DigitsCNN()
