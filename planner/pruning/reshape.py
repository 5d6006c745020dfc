"""The one module architecture files add: the input reshape (imports torch)."""

from __future__ import annotations

import torch.nn as nn


class Reshape(nn.Module):
    """``x.reshape(-1, *shape)``: takes rows of C*H*W features and C,H,W images alike."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(int(v) for v in shape)

    def forward(self, x):
        return x.reshape(-1, *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"
