"""LPIPS (VGG): torchvision's VGG16 conv trunk written out, LPIPS' input scaling and lin layers, loaded from one
local file."""

from __future__ import annotations

import os

import torch
from torch import nn

from .distance import FeatureDistance

# torchvision's VGG16 ("D") `features` up to relu5_3: channels of each 3×3 conv, "M" a 2×2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAP_INDICES = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision's numbering
TAP_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

CONVERT_HINT = ("make it from torchvision's vgg16-397923af.pth (https://download.pytorch.org/models/"
                "vgg16-397923af.pth) and the lpips package's lpips/weights/v0.1/vgg.pth with\n"
                "    python -m autoencoder.perceptual convert --vgg vgg16-397923af.pth --lin vgg.pth --out FILE")


class VGG16Features(nn.Sequential):
    """VGG16's conv trunk as torchvision lays out `vgg16().features` (same indices, so `features.N.*` weights load
    as they are), returning LPIPS' five taps: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.

    Input: images in [−1, 1], 3 channels (1 channel is repeated to 3), scaled as LPIPS does, (x − shift) / scale,
    shift = (−.030, −.088, −.188), scale = (.458, .448, .450) per RGB channel.
    """

    def __init__(self):
        layers: list[nn.Module] = []
        channels = 3
        for entry in VGG16_LAYOUT:
            if entry == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, entry, 3, padding=1), nn.ReLU()]
                channels = entry
        super().__init__(*layers)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.shift) / self.scale
        taps = []
        for index, layer in enumerate(self):
            x = layer(x)
            if index in TAP_INDICES:
                taps.append(x)
        return taps


def lpips_module() -> FeatureDistance:
    """LPIPS (VGG) with untrained weights: `VGG16Features` and one bias-free 1×1 conv per tap."""
    return FeatureDistance(VGG16Features(), [nn.Conv2d(channels, 1, 1, bias=False) for channels in TAP_CHANNELS])


def lpips(path: str | os.PathLike) -> FeatureDistance:
    """LPIPS (VGG) with all its weights (trunk `features.*`, lin layers `weights.*`) read from the local file `path`
    (`torch.load(weights_only=True)` of `lpips_module().state_dict()`); nothing is downloaded."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no LPIPS weights file {os.fspath(path)!r}: {CONVERT_HINT}")
    module = lpips_module()
    state = torch.load(path, map_location="cpu", weights_only=True)
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong_shape = sorted(key for key in set(expected) & set(state) if state[key].shape != expected[key].shape)
    if missing or unexpected or wrong_shape:
        raise ValueError(f"{os.fspath(path)!r} is not an LPIPS (VGG) weights file: missing keys {missing[:5]}, "
                         f"unexpected keys {unexpected[:5]}, wrong shapes {wrong_shape[:5]}; {CONVERT_HINT}")
    module.load_state_dict(state)
    return module
