"""MobileFaceNet-class backbone (Chen et al., 2018) in plain torch.nn.

At width 1.0 and embedding 128 it has about 1.0M parameters. The stem and
three stride-2 bottleneck stages reduce the input 16-fold; the global
depthwise conv (GDC) head then takes the whole final map, so its kernel is
derived from the input size instead of being fixed at 7x7 (112 input)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURE = "mobilefacenet"  # ModelManifest.architecture

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 1.
BOTTLENECK_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)
STEM_CHANNELS = 64
HEAD_CHANNELS = 512


def scaled(channels: int, width: float, divisor: int = 8) -> int:
    """Channels times the width multiplier, rounded to a multiple of `divisor`
    (never below it, never more than 10% under the exact value), the usual
    MobileNet rule so that kernels stay vector-friendly."""
    exact = channels * width
    out = max(divisor, int(exact + divisor / 2) // divisor * divisor)
    if out < 0.9 * exact:
        out += divisor
    return out


def final_map_size(input_size: int) -> int:
    """Spatial size after the four 3x3 stride-2 convs (padding 1)."""
    size = input_size
    for _ in range(4):
        size = (size + 2 - 3) // 2 + 1
    return size


class ConvBlock(nn.Module):
    """Conv + BatchNorm, with PReLU unless `linear` (bottleneck projections stay linear)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        linear: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act: nn.Module = nn.Identity() if linear else nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, linear 1x1 project."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            ConvBlock(cin, hidden, 1),
            ConvBlock(hidden, hidden, 3, stride, 1, groups=hidden),
            ConvBlock(hidden, cout, 1, linear=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileFaceNet(nn.Module):
    """Face embedding network; `forward` returns L2-normalised embeddings (N, embedding_dim)."""

    def __init__(self, width: float = 1.0, input_size: int = 112, embedding_dim: int = 128) -> None:
        super().__init__()
        if not 0.1 <= width <= 4.0:
            raise ValueError(f"width multiplier {width} is out of range [0.1, 4]")
        if input_size < 16:
            raise ValueError(f"input size {input_size} is too small (need >= 16)")
        if not 16 <= embedding_dim <= 1024:
            raise ValueError(f"embedding dim {embedding_dim} is out of range [16, 1024]")
        self.width = width
        self.input_size = input_size
        self.embedding_dim = embedding_dim
        stem = scaled(STEM_CHANNELS, width)
        self.stem = nn.Sequential(
            ConvBlock(3, stem, 3, 2, 1),
            ConvBlock(stem, stem, 3, 1, 1, groups=stem),
        )
        blocks: list[nn.Module] = []
        cin = stem
        for t, c, n, s in BOTTLENECK_SETTINGS:
            cout = scaled(c, width)
            for i in range(n):
                blocks.append(Bottleneck(cin, cout, s if i == 0 else 1, t))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        head = scaled(HEAD_CHANNELS, width)
        self.expand = ConvBlock(cin, head, 1)
        k = final_map_size(input_size)
        # GDC: one weight per position and channel, so the embedding can weigh the
        # centre of the face differently from the corners (average pooling cannot).
        self.gdc = ConvBlock(head, head, k, groups=head, linear=True)
        self.project = nn.Conv2d(head, embedding_dim, 1, bias=False)
        self.bn_embedding = nn.BatchNorm1d(embedding_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings before normalisation, (N, embedding_dim)."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"expected {self.input_size}x{self.input_size} input, got {tuple(x.shape[-2:])}")
        x = self.expand(self.blocks(self.stem(x)))
        x = self.project(self.gdc(x)).flatten(1)
        return self.bn_embedding(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(x), dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
