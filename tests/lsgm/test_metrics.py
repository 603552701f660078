"""Fréchet distances against closed forms, the Inception weights round trip, the shipped digits classifier,
sample quality from tensors and from .npz files, and the evaluation figures."""

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from lsgm.data import load_dataset, to_levels
from lsgm.metrics import (
    FeatureStatistics,
    FIDInceptionV3,
    InceptionFeatures,
    WeightsError,
    feature_statistics,
    frechet_distance,
    plot_bound_terms,
    plot_rate_distortion,
    quality,
    save_progressive_grid,
)
from lsgm.metrics.digits_classifier import TRAIN_COMMAND, accuracy, load_digits_classifier
from sde.ddpm import DDPMSchedule
from sde.gaussian import gaussian
from sde.vlb import variational_bound


def closed_form_frechet(mean_a, cov_a, mean_b, cov_b) -> float:
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^{1/2}) with scipy's general matrix square root."""
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def random_covariance(rng, dim):
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


# --- Fréchet distance -------------------------------------------------------------------------------
@pytest.mark.parametrize("count, dim", [(500, 16), (20, 64)])  # the second: singular covariance (N < F)
def test_frechet_distance_of_a_set_with_itself_is_zero(count, dim):
    features = np.random.default_rng(0).normal(size=(count, dim)) * np.linspace(0.1, 3, dim)
    stats = feature_statistics(features)
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_exact_statistics_is_the_closed_form():
    rng = np.random.default_rng(1)
    mean_a, mean_b = rng.normal(size=6), rng.normal(size=6)
    cov_a, cov_b = random_covariance(rng, 6), random_covariance(rng, 6)
    exact = frechet_distance(FeatureStatistics(mean_a, cov_a, 0), FeatureStatistics(mean_b, cov_b, 0))
    assert exact == pytest.approx(closed_form_frechet(mean_a, cov_a, mean_b, cov_b), rel=1e-10)


def test_frechet_distance_of_samples_matches_the_closed_form():
    """Two 5-d Gaussians, 20000 samples each: closed form 3.35, sample estimate within 2%."""
    rng = np.random.default_rng(2)
    mean_a, mean_b = rng.normal(size=5), rng.normal(size=5)
    cov_a, cov_b = random_covariance(rng, 5), random_covariance(rng, 5)
    samples_a = rng.multivariate_normal(mean_a, cov_a, size=20000)
    samples_b = rng.multivariate_normal(mean_b, cov_b, size=20000)
    estimate = frechet_distance(feature_statistics(samples_a), feature_statistics(samples_b))
    assert estimate == pytest.approx(closed_form_frechet(mean_a, cov_a, mean_b, cov_b), rel=0.02)


def test_feature_statistics_are_mean_and_unbiased_covariance():
    features = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    stats = feature_statistics(features)
    assert np.allclose(stats.mean, [2.0, 4.0]) and stats.count == 3
    assert np.allclose(stats.covariance, np.cov(features.numpy().T))
    with pytest.raises(ValueError, match="N ≥ 2"):
        feature_statistics(features[:1])


# --- Inception ----------------------------------------------------------------------------------------
def test_inception_weights_round_trip(tmp_path):
    """A randomly initialised FID Inception saved in pytorch-fid's layout (with its unused 1008-way fc)
    loads through InceptionFeatures and reproduces the saving network's pool3 features."""
    torch.manual_seed(0)
    network = FIDInceptionV3().eval()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    state = network.state_dict() | {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    torch.save(state, tmp_path / "inception.pth")
    extractor = InceptionFeatures(tmp_path / "inception.pth")

    gray = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    features = extractor(gray)
    assert features.shape == (2, 2048) and extractor.num_features == 2048
    assert torch.equal(features, extractor(gray.repeat(1, 3, 1, 1)))  # grayscale is a three-fold channel repeat
    resized = torch.nn.functional.interpolate(gray.repeat(1, 3, 1, 1), size=(299, 299), mode="bilinear",
                                              align_corners=False)
    with torch.no_grad():
        assert torch.allclose(features, network(resized), atol=1e-5)


def test_inception_weights_errors_say_what_to_do(tmp_path):
    with pytest.raises(WeightsError, match="pt_inception-2015-12-05-6726825d.pth"):
        InceptionFeatures(tmp_path / "missing.pth")
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match=r"missing \(\d+\): Conv2d_1a_3x3.bn.weight"):
        InceptionFeatures(tmp_path / "partial.pth")


# --- the digits classifier and digits-FD -----------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier():
    return load_digits_classifier()


@pytest.fixture(scope="module")
def test_split():
    return load_dataset("digits", split="test")


def test_shipped_classifier_is_accurate_and_small(classifier, test_split):
    """Measured: 358/360 = 99.4% on the digits test split; 45k parameters, 181 KiB."""
    assert accuracy(classifier, test_split.x, test_split.y) >= 0.95
    assert sum(p.numel() for p in classifier.parameters()) < 100_000


def test_missing_classifier_names_the_training_command(tmp_path):
    with pytest.raises(WeightsError, match=TRAIN_COMMAND):
        load_digits_classifier(tmp_path / "absent.pt")


def test_digits_fd_separates_data_from_noise(classifier):
    """Measured digits-FD against the test split: the train split 14.5, uniform noise 737, one class 1380."""
    train = load_dataset("digits", split="train", val_fraction=0)
    data = quality.sample_quality(train.x, digits_classifier=classifier)
    noise = torch.rand(360, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noisy = quality.sample_quality(noise, digits_classifier=classifier)
    ones = quality.sample_quality(train.x[train.y == 1], digits_classifier=classifier)
    assert data["digits_fd"] < 30 and noisy["digits_fd"] > 300 and ones["digits_fd"] > 300
    assert data["class_diversity_nats"] > 0.99 * math.log(10) and data["class_confidence_entropy_nats"] < 0.05
    assert ones["class_diversity_nats"] < 0.05


def test_class_statistics_of_uniform_and_certain_predictions():
    uniform = quality.class_statistics(torch.full((4, 10), 0.1))
    assert uniform["class_diversity_nats"] == pytest.approx(math.log(10))
    assert uniform["class_confidence_entropy_nats"] == pytest.approx(math.log(10))
    certain = quality.class_statistics(torch.eye(10))
    assert certain["class_diversity_nats"] == pytest.approx(math.log(10))
    assert certain["class_confidence_entropy_nats"] == 0.0


def test_npz_path_gives_the_tensor_numbers(tmp_path, classifier, test_split):
    images = test_split.x[:200]
    np.savez(tmp_path / "samples.npz", to_levels(images, 17).numpy().astype(np.uint8))  # 'arr_0', no levels
    from_tensor = quality.sample_quality(images, digits_classifier=classifier)
    from_file = quality.npz_sample_quality(tmp_path / "samples.npz", digits_classifier=classifier)
    assert from_file.keys() == from_tensor.keys()
    # the file's images come back permuted: float32 round-off of the features only, which FD (a difference of traces
    # ~10² times its value here) magnifies to ~2e-6 relative; 1e-5 leaves headroom across BLAS builds
    for name, value in from_tensor.items():
        assert from_file[name] == pytest.approx(value, rel=1e-5, abs=1e-9)


def test_quality_command_line_writes_json(tmp_path, capsys):
    images = load_dataset("digits", split="test").x[:50]
    np.savez(tmp_path / "samples.npz", x=to_levels(images, 17).numpy(), levels=np.int64(17))
    quality.main([str(tmp_path / "samples.npz"), "--json", str(tmp_path / "out" / "quality.json")])
    written = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert set(written) == {"num_samples", "digits_fd", "class_diversity_nats", "class_confidence_entropy_nats"}
    assert "digits_fd" in capsys.readouterr().out


def test_samples_of_the_wrong_shape_are_refused(classifier):
    with pytest.raises(ValueError, match="shape"):
        quality.sample_quality(torch.zeros(4, 1, 28, 28), digits_classifier=classifier)


# --- figures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table():
    schedule = DDPMSchedule.linear(100, 1e-3, 0.2)
    distribution = gaussian(torch.zeros(4, dtype=torch.float64), torch.full((4,), 0.2, dtype=torch.float64))
    x0 = distribution.sample(16, generator=torch.Generator().manual_seed(0))
    bound = variational_bound(distribution.eps_fn_discrete(schedule), schedule, x0, 17,
                              generator=torch.Generator().manual_seed(1))
    return bound.rate_distortion()


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_bound_terms_plot_is_a_png_of_the_stated_size(tmp_path, table):
    assert png_size(plot_bound_terms(table, tmp_path / "terms.png", width=640, height=400)) == (640, 400)


def test_rate_distortion_plot_is_a_png_of_the_stated_size(tmp_path, table):
    assert png_size(plot_rate_distortion(table, tmp_path / "fig5" / "rd.png", width=900, height=300)) == (900, 300)


def test_progressive_grid_has_a_row_per_sample_and_a_column_per_step(tmp_path):
    predictions = [torch.rand(3, 1, 8, 8) * 2 - 1 for _ in range(5)]
    labels = ["t = 1000", "t = 500", "t = 100", "t = 1", "original"]
    path = save_progressive_grid(predictions, tmp_path / "progressive.png", labels, cell=80)
    assert png_size(path) == (5 * 80, 3 * 80 + 24)  # a tile per image and step, a strip of column labels
    with Image.open(path) as image:
        assert abs(image.convert("L").getpixel((0, 0)) - 128) <= 1  # the grey ground between and above the tiles
    with pytest.raises(ValueError, match="4 labels for 5 columns"):
        save_progressive_grid(predictions, tmp_path / "bad.png", labels[:4])
