"""FeatureDistance against hand computations, VGG16Features' layout, lpips() from a local file and the converter."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from autoencoder import FeatureDistance, VGG16Features, lpips
from autoencoder.perceptual import convert, lpips_module
from autoencoder.perceptual.convert import main

VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision's vgg16().features conv indices


class Taps(nn.Module):
    """Two linear feature maps: x itself and 2x (the unit normalisation makes them agree)."""

    def forward(self, x):
        return [x, 2 * x]


def test_hand_computed_value_on_one_pixel():
    x, y = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1), torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    # n(x) = [0.6, 0.8], n(y) = [0, 1]: squared differences [0.36, 0.04]
    assert FeatureDistance(Taps())(x, y).item() == pytest.approx(2 * 0.4)
    lin = [nn.Conv2d(2, 1, 1, bias=False) for _ in range(2)]
    for layer, weights in zip(lin, ([2.0, 1.0], [0.0, 10.0])):
        layer.weight.data = torch.tensor(weights).view(1, 2, 1, 1)
    assert FeatureDistance(Taps(), lin)(x, y).item() == pytest.approx(0.76 + 0.4)


def test_mean_over_pixels_and_sum_over_layers_match_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    features = nn.Conv2d(3, 4, 1, bias=False).double()
    features.weight.data = mixing.view(4, 3, 1, 1)
    distance = FeatureDistance(ListOf(features))
    x = torch.randn(2, 3, 5, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(2, 3, 5, 5, generator=generator, dtype=torch.float64)
    fx, fy = torch.einsum("oc,bchw->bohw", mixing, x), torch.einsum("oc,bchw->bohw", mixing, y)
    nx, ny = fx / (fx.norm(dim=1, keepdim=True) + 1e-10), fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
    expected = (nx - ny).pow(2).sum(1).mean(dim=(1, 2))
    assert torch.allclose(distance(x, y), expected, rtol=1e-12)


class ListOf(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return [self.module(x)]


def test_zero_symmetric_positive_and_frozen():
    torch.manual_seed(0)
    distance = FeatureDistance(ListOf(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))))
    x, y = torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(2, 3, 8, 8)
    assert torch.equal(distance(x, x), torch.zeros(2))
    assert torch.allclose(distance(x, y), distance(y, x)) and (distance(x, y) > 0).all()
    distance.train()
    assert not distance.training and not distance.features.training
    assert not any(parameter.requires_grad for parameter in distance.parameters())
    distance(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_vgg16_layout_and_taps():
    features = VGG16Features()
    convs = [index for index, layer in enumerate(features) if isinstance(layer, nn.Conv2d)]
    assert tuple(convs) == VGG_CONVS and len(features) == 30
    taps = features(torch.zeros(1, 3, 32, 32))
    assert [tuple(tap.shape[1:]) for tap in taps] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4),
                                                      (512, 2, 2)]
    gray = torch.rand(1, 1, 16, 16) * 2 - 1
    assert all(torch.equal(a, b) for a, b in zip(features(gray), features(gray.expand(-1, 3, -1, -1))))


@pytest.fixture(scope="module")
def random_lpips_state():
    """Random weights; the lin weights non-negative, as LPIPS' are (so distances are)."""
    torch.manual_seed(0)
    state = lpips_module().state_dict()
    return {key: value.abs() if key.startswith("weights.") else value for key, value in state.items()}


def test_lpips_loads_all_weights_from_a_file(tmp_path, random_lpips_state):
    path = tmp_path / "lpips_vgg.pt"
    torch.save(random_lpips_state, path)
    distance = lpips(path)
    assert all(torch.equal(value, random_lpips_state[key]) for key, value in distance.state_dict().items())
    x, y = torch.rand(2, 1, 16, 16) * 2 - 1, torch.rand(2, 1, 16, 16) * 2 - 1
    assert torch.equal(distance(x, x), torch.zeros(2)) and (distance(x, y) > 0).all()


def test_lpips_errors_say_how_to_make_the_file(tmp_path, random_lpips_state):
    with pytest.raises(FileNotFoundError, match="python -m autoencoder.perceptual convert"):
        lpips(tmp_path / "absent.pt")
    path = tmp_path / "wrong.pt"
    torch.save({key: value for key, value in random_lpips_state.items() if key != "weights.0.weight"}, path)
    with pytest.raises(ValueError, match=r"(?s)missing keys \[.weights.0.weight.\].*convert"):
        lpips(path)


def fake_published_state_dicts():
    """Small stand-ins for torchvision's vgg16 and lpips' vgg.pth: the right keys, one number each."""
    vgg = {f"features.{index}.{kind}": torch.tensor([float(index)]) for index in VGG_CONVS
           for kind in ("weight", "bias")}
    vgg["classifier.0.weight"] = torch.zeros(1)
    lin = {f"lin{layer}.model.1.weight": torch.tensor([100.0 + layer]) for layer in range(5)}
    return vgg, lin


def test_converter_renames_keys():
    vgg, lin = fake_published_state_dicts()
    state = convert(vgg, lin)
    assert set(state) == set(lpips_module().state_dict())
    assert all(state[key] is vgg[key] for key in state if key.startswith("features."))
    assert all(state[f"weights.{layer}.weight"] is lin[f"lin{layer}.model.1.weight"] for layer in range(5))
    del lin["lin4.model.1.weight"]
    with pytest.raises(ValueError, match="lin4"):
        convert(vgg, lin)


def test_converter_command_writes_the_file_lpips_reads(tmp_path, random_lpips_state):
    vgg = {key: value for key, value in random_lpips_state.items() if key.startswith("features.")}
    vgg["classifier.6.bias"] = torch.zeros(1000)
    lin = {f"lin{layer}.model.1.weight": random_lpips_state[f"weights.{layer}.weight"] for layer in range(5)}
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "vgg.pth")
    main(["convert", "--vgg", str(tmp_path / "vgg16.pth"), "--lin", str(tmp_path / "vgg.pth"),
          "--out", str(tmp_path / "lpips_vgg.pt")])
    loaded = lpips(tmp_path / "lpips_vgg.pt").state_dict()
    assert all(torch.equal(value, random_lpips_state[key]) for key, value in loaded.items())


def test_converter_runs_as_a_module(tmp_path):
    vgg, lin = fake_published_state_dicts()
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "vgg.pth")
    command = [sys.executable, "-W", "error::RuntimeWarning", "-m", "autoencoder.perceptual", "convert",
               "--vgg", str(tmp_path / "vgg16.pth"), "--lin", str(tmp_path / "vgg.pth"), "--out",
               str(tmp_path / "out.pt")]
    subprocess.run(command, check=True, capture_output=True, cwd=Path(__file__).parents[2])  # the repository root
    assert set(torch.load(tmp_path / "out.pt", weights_only=True)) == set(lpips_module().state_dict())
