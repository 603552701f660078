"""Sample-quality metrics (Fréchet distances on pluggable features, class statistics) and evaluation plots.

`frechet`: Gaussian feature statistics and the Fréchet distance. `features`: the FeatureExtractor
interface. `inception`: FID's Inception-v3 pool3 from a local weights file. `plots`: figures of the bound
and of progressive coding. Two modules are also command lines and so are imported by name, not here
(`python -m` would otherwise import them twice): `digits_classifier` (the shipped digits CNN behind
digits-FD, and its training command) and `quality` (metrics of tensors or .npz samples).
"""

from .features import FeatureExtractor, WeightsError, extract_features, statistics_of
from .frechet import FeatureStatistics, feature_statistics, frechet_distance
from .inception import FIDInceptionV3, InceptionFeatures
from .plots import plot_bound_terms, plot_rate_distortion, save_progressive_grid

__all__ = [
    "FIDInceptionV3",
    "FeatureExtractor",
    "FeatureStatistics",
    "InceptionFeatures",
    "WeightsError",
    "extract_features",
    "feature_statistics",
    "frechet_distance",
    "plot_bound_terms",
    "plot_rate_distortion",
    "save_progressive_grid",
    "statistics_of",
]
