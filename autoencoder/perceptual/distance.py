"""A learned-feature distance between images: LPIPS's formula over any feature network."""

from __future__ import annotations

import torch
from torch import nn


def unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """n(f) = f / (‖f‖₂ over channels + eps), per pixel (LPIPS' normalize_tensor)."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class FeatureDistance(nn.Module):
    """d(x, y) per image (B,) = Σ_l mean_{h,w} Σ_c w_{l,c} (n(f_l(x)) − n(f_l(y)))²_{c,h,w}.

    f_l are the feature maps (B, C_l, H_l, W_l) that `features(x)` returns as a list, n the unit normalisation
    over channels (`unit_normalize`), w_l LPIPS' "lin" layers (a bias-free 1×1 conv C_l → 1 per layer, the
    `weights` list) or all ones (None). The whole module is frozen, a loss: no parameter requires a gradient (the
    gradient still reaches x and y) and it stays in eval mode under train().

    Args: features: the feature network, images in [−1, 1] → list of L feature maps; weights: L modules mapping
        (B, C_l, H, W) → (B, 1, H, W), or None.
    """

    def __init__(self, features: nn.Module, weights: list[nn.Module] | None = None):
        super().__init__()
        self.features = features
        self.weights = nn.ModuleList(weights) if weights is not None else None
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureDistance:
        """Stays in eval mode (frozen)."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """d(x, y), (B,), for images x, y (B, C, H, W) in [−1, 1]."""
        features_x, features_y = self.features(x), self.features(y)
        if self.weights is not None and len(self.weights) != len(features_x):
            raise ValueError(f"{len(self.weights)} weight layers for {len(features_x)} feature maps")
        distance = x.new_zeros(x.shape[0])
        for layer, (feature_x, feature_y) in enumerate(zip(features_x, features_y)):
            squared = (unit_normalize(feature_x) - unit_normalize(feature_y)).pow(2)
            weighted = self.weights[layer](squared) if self.weights is not None else squared.sum(1, keepdim=True)
            distance = distance + weighted.mean(dim=(1, 2, 3))
        return distance
