"""The Fréchet distance between Gaussian fits of two feature sets (FID when the features are Inception's).

    d²((μ₁, Σ₁), (μ₂, Σ₂)) = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^{1/2}

(Heusel et al. 2017). tr (Σ₁Σ₂)^{1/2} is computed as Σ_i √λ_i(S Σ₂ S) with S = Σ₁^{1/2}, both from
symmetric eigendecompositions in float64: Σ₁Σ₂ and SΣ₂S are similar, and SΣ₂S is symmetric positive
semi-definite, so the square root is real and needs no inverse. Round-off below zero is clipped, which
is the guard against complex parts and singular covariances (N ≤ F samples, dead features).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class FeatureStatistics:
    """Mean (F,) and unbiased covariance (F, F) of `count` feature vectors, float64."""

    mean: np.ndarray
    covariance: np.ndarray
    count: int


def feature_statistics(features) -> FeatureStatistics:
    """μ = mean of the rows, Σ = Σ_n (f_n − μ)(f_n − μ)ᵀ/(N − 1) of features (N, F), N ≥ 2."""
    features = features.detach().cpu().numpy() if torch.is_tensor(features) else np.asarray(features)
    features = features.astype(np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must have shape (N, F) with N ≥ 2, got {features.shape}")
    return FeatureStatistics(features.mean(0), np.cov(features, rowvar=False).reshape(features.shape[1], -1),
                             features.shape[0])


def symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The PSD square root U diag(√max(λ, 0)) Uᵀ of a symmetric matrix U diag(λ) Uᵀ."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def trace_sqrt_product(covariance_a: np.ndarray, covariance_b: np.ndarray) -> float:
    """tr (Σ_a Σ_b)^{1/2} = Σ_i √λ_i(Σ_a^{1/2} Σ_b Σ_a^{1/2})."""
    root = symmetric_sqrt(covariance_a)
    product = root @ covariance_b @ root
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())


def frechet_distance(stats_a: FeatureStatistics, stats_b: FeatureStatistics) -> float:
    """‖μ_a − μ_b‖² + tr Σ_a + tr Σ_b − 2 tr (Σ_a Σ_b)^{1/2} (≥ 0; clipped at 0 against round-off)."""
    if stats_a.mean.shape != stats_b.mean.shape:
        raise ValueError(f"feature dimensions differ: {stats_a.mean.shape[0]} and {stats_b.mean.shape[0]}")
    mean_term = float(np.sum((stats_a.mean - stats_b.mean) ** 2))
    covariance_term = (np.trace(stats_a.covariance) + np.trace(stats_b.covariance)
                       - 2 * trace_sqrt_product(stats_a.covariance, stats_b.covariance))
    return max(mean_term + float(covariance_term), 0.0)
