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


# --------------------------------------------------------------------- CIFAR-sized references
# torchvision's wheel on the package index does not import next to the CPU torch here, so the
# reference models people prune are defined here, for 3x32x32 inputs.


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with batch norm, a residual addition."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for CIFAR (3x3 stem, no max pool), widths 64-128-256-512 scaled by ``width``."""

    def __init__(self, num_classes: int = 10, width: int = 64):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU()
        layers, cin = [], w[0]
        for i, cout in enumerate(w):
            for j in range(2):
                layers.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w[3], num_classes)

    def forward(self, x):
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18(num_classes: int = 10, width: int = 64, seed: int = 0) -> ResNet18:
    torch.manual_seed(seed)
    return ResNet18(num_classes, width)


class VGG(nn.Module):
    """VGG-11 for CIFAR: eight 3x3 convolutions with max pools, then 512-512-512-classes with
    ReLU (and dropout) between the Linear layers, the chain the bound covers."""

    CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        layers, cin = [], 3
        for v in self.CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                cout = max(1, int(v * width))
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
                cin = cout
        self.features = nn.Sequential(*layers)
        hidden = max(1, int(512 * width))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(cin, hidden), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def vgg11(num_classes: int = 10, width: float = 1.0, seed: int = 0) -> VGG:
    torch.manual_seed(seed)
    return VGG(num_classes, width)


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small ViT for 3x32x32 inputs: 4x4 patches (a strided convolution), a class token,
    ``depth`` pre-norm blocks of nn.MultiheadAttention and a GELU MLP, a Linear head."""

    def __init__(self, num_classes: int = 10, dim: int = 64, depth: int = 4, heads: int = 4, mlp: int = 128,
                 patch: int = 4, image: int = 32):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        n = (image // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads, mlp) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit_small(num_classes: int = 10, dim: int = 64, depth: int = 4, seed: int = 0) -> ViT:
    torch.manual_seed(seed)
    return ViT(num_classes, dim, depth)
