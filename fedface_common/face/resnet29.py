"""dlib's face descriptor network (`dlib_face_recognition_resnet_model_v1`) in plain torch.nn.

A ResNet of 29 convolutions: a 7x7 stride-2 stem and a 3x3 stride-2 max pool,
then 14 residual blocks of two 3x3 convolutions (four of them downsampling),
global average pooling and a 256 -> 128 linear layer without bias. Input 150x150
RGB; output a 128-d descriptor (not unit length in dlib; `forward` normalises
it, `features` does not). About 5.6M parameters.

dlib stores each convolution as conv + bias followed by an affine "scale" layer
(its BatchNorm, frozen after training). The importer folds the affine into the
convolution, so every layer here is a plain Conv2d with bias: exact up to float
rounding, and one tensor pair per layer for the devices to train.

dlib's padding rules, which the port must follow to the pixel: stride-1
convolutions are 'same' (padding 1), stride-2 convolutions and pools are
'valid'. A downsampling block adds its convolutions' output to the 2x2 average
pool of its input; when the two differ in size (the last two blocks), the
smaller is zero-padded at the bottom and right, and the pooled input's missing
channels are zeros."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURE = "dlib-resnet29"  # ModelManifest.architecture
INPUT_SIZE = 150
EMBEDDING_DIM = 128
# (output channels, downsampling) of each residual block, in order.
BLOCKS: tuple[tuple[int, bool], ...] = (
    (32, False), (32, False), (32, False),
    (64, True), (64, False), (64, False), (64, False),
    (128, True), (128, False), (128, False),
    (256, True), (256, False), (256, False),
    (256, True),
)
STEM_CHANNELS = 32


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        if not self.down:
            return F.relu(out + x)
        shortcut = F.avg_pool2d(x, 2, 2)
        dh, dw = shortcut.shape[-2] - out.shape[-2], shortcut.shape[-1] - out.shape[-1]
        if dh > 0 or dw > 0:
            out = F.pad(out, (0, max(dw, 0), 0, max(dh, 0)))
        extra = out.shape[1] - shortcut.shape[1]
        if extra > 0:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, extra))
        return F.relu(out + shortcut)


class DlibResNet29(nn.Module):
    """Face embedding network; `forward` returns L2-normalised embeddings (N, 128)."""

    def __init__(self) -> None:
        super().__init__()
        self.input_size = INPUT_SIZE
        self.embedding_dim = EMBEDDING_DIM
        self.stem = nn.Conv2d(3, STEM_CHANNELS, 7, stride=2, padding=0)
        blocks: list[nn.Module] = []
        cin = STEM_CHANNELS
        for cout, down in BLOCKS:
            blocks.append(ResidualBlock(cin, cout, down))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, EMBEDDING_DIM, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The descriptor before normalisation, (N, 128)."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"expected {self.input_size}x{self.input_size} input, got {tuple(x.shape[-2:])}")
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        x = self.blocks(x).mean(dim=(2, 3))
        return self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(x), dim=1)
