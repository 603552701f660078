"""benchmarks/score_prior_ablation.py: a fresh score prior per variant on a frozen VAE, end to end on a tiny run."""

import argparse

import pytest
import torch

from lsgm.models.latent import INACTIVE_LOGIT

from ..conftest import benchmark_module
from .conftest import tiny_config, train


@pytest.fixture(scope="module")
def ablation():
    with benchmark_module("score_prior_ablation") as module:
        yield module


@pytest.fixture(scope="module")
def class_checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("class_run")
    train(tiny_config("experiment=digits_class", "logger=none"), run_dir)
    return run_dir / "checkpoints" / "best.pt"


def test_variants_parse_and_bad_ones_name_the_choices(ablation):
    assert ablation.parse_variant("residual:cosine:drop_all_uniform") == ("residual", "cosine", "drop_all_uniform")
    for bad, message in [("residual:cosine", "PARAMETERISATION:SDE:SCHEME"), ("fancy:vp:ll_iw", "residual, mixed"),
                         ("mixed:nosuch:ll_iw", "no configs/sde/nosuch.yaml")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            ablation.parse_variant(bad)


def test_fresh_prior_keeps_the_vae_and_its_inactive_channels(ablation, class_checkpoint):
    import lsgm

    trained = lsgm.load(class_checkpoint)
    trained.active[:3] = 0.0  # as drop_inactive_var leaves it
    mixed = ablation.fresh_prior(trained, "mixed", "geometric")
    for name, value in trained.vae.state_dict().items():
        assert torch.equal(mixed.vae.state_dict()[name], value), name
    assert not any(p.requires_grad for p in mixed.vae.parameters())
    assert torch.equal(mixed.active, trained.active)
    assert torch.all(mixed.mixing_logit[:3] == INACTIVE_LOGIT) and torch.all(mixed.mixing_logit[3:] == -3.0)
    residual = ablation.fresh_prior(trained, "residual", "cosine", ["score.net.context_in_time=true"])
    assert residual.residual and residual.score_net.context_temb is not None  # --set reaches the fresh network
    assert residual.sde.marginal(torch.tensor([1.0]))[1].item() > 0.9999  # the cosine SDE's end (log-SNR −10)
    pure = ablation.fresh_prior(trained, "net", "vp")
    assert not pure.has_normal_base and torch.all(pure.active == 1.0)  # ε'_θ alone sees and predicts every channel
    # a fresh network: the trained one's weights are not carried over
    assert not all(torch.equal(a, b) for a, b in zip(pure.score_net.parameters(), trained.score_net.parameters()))


def test_training_with_ema_leaves_the_average_of_the_weights(ablation, class_checkpoint):
    """Two steps with decay 0.5 end at EMA's warm-up average d₂(d₁θ₀ + (1 − d₁)θ₁) + (1 − d₂)θ₂, d_n = min(0.5,
    (1 + n)/(10 + n)), where θ₁ and θ₂ are what one and two steps without EMA reach from the same seeds."""
    import lsgm

    trained = lsgm.load(class_checkpoint)
    x, y = torch.rand(8, *trained.data_shape) * 2 - 1, torch.arange(8) % 10

    def weights_after(steps: int, ema_decay=None) -> dict:
        torch.manual_seed(0)
        model = ablation.fresh_prior(trained, "residual", "cosine")
        torch.manual_seed(1)
        ablation.train_prior(model, x, y, "drop_all_uniform", steps, 1e-2, 1e-2, torch.Generator().manual_seed(2),
                             ema_decay)
        return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    first, second, averaged, initial = weights_after(1), weights_after(2), weights_after(2, 0.5), weights_after(0)
    d1, d2 = 2 / 11, 3 / 12
    for name, value in averaged.items():
        expected = d2 * (d1 * initial[name] + (1 - d1) * first[name]) + (1 - d2) * second[name]
        assert torch.allclose(value, expected, atol=1e-6), name
    assert any(not torch.equal(averaged[name], second[name]) for name in averaged)


def test_the_ablation_writes_a_table_with_the_bounds_and_every_variant(ablation, class_checkpoint, tmp_path):
    import lsgm

    ablation.main([str(class_checkpoint), "--variants", "residual:cosine:drop_all_uniform", "mixed:vp:ll_iw",
                   "--steps", "2", "--per-class", "3", "--guidance", "1", "2", "--out", str(tmp_path),
                   "--save", str(tmp_path / "saved"), "--target", "posterior_mixture"])
    saved = lsgm.load(tmp_path / "saved" / "residual-cosine-drop_all_uniform")  # a model the other benchmarks load
    assert saved.residual and saved.sde.marginal(torch.tensor([1.0]))[1].item() > 0.9999
    assert sorted(path.name for path in (tmp_path / "saved").iterdir()) == ["mixed-vp-ll_iw",
                                                                            "residual-cosine-drop_all_uniform"]
    table = (tmp_path / "score_prior_ablation.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = ["posterior", "N(0, I)", "one Gaussian", "a Gaussian per class", "residual:cosine:drop_all_uniform",
             "mixed:vp:ll_iw"]
    assert [row.split(" | ")[0][2:] for row in rows] == names
    for row in rows:
        cells = [cell.strip() for cell in row.strip("| ").split("|")]
        assert float(cells[3]) > 0  # a digits-FD
        if cells[0] not in ("N(0, I)", "one Gaussian"):
            assert all(0.0 <= float(cell) <= 1.0 for cell in cells[1:3])  # the requested-class fractions
        if ":" in cells[0]:
            assert float(cells[4]) <= 1.0  # the share of E[ε | z_t] learned
    assert "target posterior_mixture" in table


def test_the_learned_share_is_0_for_the_vaes_prior_and_1_for_the_posterior_mixture(ablation, class_checkpoint):
    """A fresh residual prior (its network's output starts at zero) is exactly the N(0, I) base: share 0. A model
    whose ε̂ is E[ε | z_t] under the same posteriors (`posterior_mixture_eps`, the same seeded encoder pass): share 1."""
    import lsgm
    from lsgm.objective import posterior_mixture_eps

    trained = lsgm.load(class_checkpoint)
    x = torch.rand(24, *trained.data_shape) * 2 - 1
    model = ablation.fresh_prior(trained, "residual", "cosine").eval()
    assert ablation.learned_share(model, x, 1e-2, seed=3, count=40, chunk=16) == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(3)
    latents = model.latent_terms(model.vae.encode(x))
    model.guided_eps = lambda z_t, t, inputs: posterior_mixture_eps(model, z_t, t, (latents.mean, latents.variance))
    assert ablation.learned_share(model, x, 1e-2, seed=3, count=40, chunk=16) == pytest.approx(1.0, abs=1e-6)


def test_a_gaussian_fit_draws_the_mean_and_covariance_of_its_latents(ablation):
    torch.manual_seed(0)
    mixing = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 2.0, 0.0, 0.0], [0.0, 0.3, 0.7, 0.0], [0.2, 0.0, 0.0, 1.5]])
    mean = torch.tensor([0.5, -1.0, 2.0, 0.0])
    latents = (torch.randn(20000, 4, dtype=torch.float64) @ mixing.T.double() + mean.double()).view(20000, 1, 2, 2)
    draws = ablation.gaussian_draws(latents, 20000).flatten(1)
    assert draws.shape == (20000, 4)
    # two Monte-Carlo estimates in a row (the fit, then the draws' moments), each of N = 20000: the standard error of a
    # mean is sqrt(c_ii / N) and of a covariance entry sqrt((c_ii c_jj + c_ij²) / N); allow 5 of both together
    covariance = (mixing @ mixing.T).double()
    variances = covariance.diagonal()
    mean_tolerance = 5 * (2 * variances / 20000).sqrt()
    covariance_tolerance = 5 * (2 * (variances[:, None] * variances[None, :] + covariance**2) / 20000).sqrt()
    assert torch.all((draws.mean(0) - mean.double()).abs() < mean_tolerance)
    assert torch.all((torch.cov(draws.T) - covariance).abs() < covariance_tolerance)
