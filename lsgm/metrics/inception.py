"""FID's Inception-v3 up to pool3 (2048-d), loading a local weights file.

The architecture is the TensorFlow FID graph (inception-2015-12-05) as ported by pytorch-fid: torchvision's
Inception-v3 with its A, C and first E blocks averaging without the zero padding (TensorFlow's
`count_include_pad=False`) and its last E block max-pooling, BatchNorm eps 1e-3, no auxiliary head. Module
names follow torchvision's, so pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` loads as is (its
classifier `fc.*` is dropped: only pool3 is used). Inputs: images in [−1, 1], resized bilinearly to
299×299 (align_corners=False) — pytorch-fid resizes in [0, 1] and then maps to [−1, 1], the same thing
since both maps are affine — and grayscale repeated to three channels.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .features import FeatureExtractor, load_matching, load_state_dict_file

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
HOW_TO_GET = (f"download pytorch-fid's {WEIGHTS_FILE} from {WEIGHTS_URL} on a machine with internet access "
              "and pass its local path")


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_options):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_options)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def tensorflow_average_pool(x):
    """3×3 average, stride 1, over the valid (unpadded) pixels only, as TensorFlow's graph does."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def tensorflow_max_pool(x):
    """3×3 max, stride 1, same-size output (FID's last block)."""
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def chain(x, *layers):
    """layers[-1](…layers[0](x))."""
    for layer in layers:
        x = layer(x)
    return x


class InceptionA(nn.Module):
    """35×35 block: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool→1×1."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            chain(x, self.branch5x5_1, self.branch5x5_2),
            chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
            self.branch_pool(tensorflow_average_pool(x)),
        ], 1)


class InceptionB(nn.Module):
    """35×35 -> 17×17 reduction: 3×3/2 | 1×1→3×3→3×3/2 | max-pool/2."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions: 1×1 | 1×7→7×1 | (7×1→1×7)×2 | avg-pool→1×1."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        row, column = {"kernel_size": (1, 7), "padding": (0, 3)}, {"kernel_size": (7, 1), "padding": (3, 0)}
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **column)
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **column)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **column)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            chain(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
            chain(x, self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                  self.branch7x7dbl_5),
            self.branch_pool(tensorflow_average_pool(x)),
        ], 1)


class InceptionD(nn.Module):
    """17×17 -> 8×8 reduction: 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max-pool/2."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([
            chain(x, self.branch3x3_1, self.branch3x3_2),
            chain(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionE(nn.Module):
    """8×8 block with split 1×3/3×1 heads: 1×1 | 1×1→(1×3, 3×1) | 1×1→3×3→(1×3, 3×1) | pool→1×1.

    `pool` is "average" (TensorFlow's, for Mixed_7b) or "max" (FID's Mixed_7c)."""

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        self.pool = {"average": tensorflow_average_pool, "max": tensorflow_max_pool}[pool]
        row, column = {"kernel_size": (1, 3), "padding": (0, 1)}, {"kernel_size": (3, 1), "padding": (1, 0)}
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, **row)
        self.branch3x3_2b = BasicConv2d(384, 384, **column)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, **row)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, **column)
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        branch3x3 = self.branch3x3_1(x)
        branch3x3dbl = chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3),
            self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl),
            self.branch_pool(self.pool(x)),
        ], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 (FID variant) from 3×299×299 inputs in [−1, 1] to the 2048-d pool3 features."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="average")
        self.Mixed_7c = InceptionE(2048, pool="max")

    def forward(self, x):
        x = chain(x, self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = chain(x, self.Conv2d_3b_1x1, self.Conv2d_4a_3x3)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = chain(x, self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                  self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c)
        return x.mean((2, 3))


class InceptionFeatures(FeatureExtractor):
    """FID's pool3 features (2048-d) with weights from a local file (pytorch-fid's key layout)."""

    name = "inception-v3-pool3"
    input_size = (299, 299)
    num_features = 2048

    def __init__(self, weights_path: str | Path, device: str | torch.device = "cpu"):
        self.network = FIDInceptionV3()
        load_matching(self.network, load_state_dict_file(weights_path, HOW_TO_GET), str(weights_path),
                      ignored_prefixes=("fc.",))
        self.network.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, C, H, W) with C in {{1, 3}}, got {tuple(images.shape)}")
        x = images.to(self.device, torch.float32).expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return self.network(x)
