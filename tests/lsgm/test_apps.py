"""Inpainting (RePaint) and interpolation (DDPM §4.4, ODE + slerp): schedules, exact Gaussian checks, latent
models end to end, masks and the commands."""

import csv
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import nvae
import sde
from lsgm.apps import cli as apps_cli
from lsgm.apps import inpaint, interpolate, interpolate_ode, make_masks, repaint, repaint_schedule, slerp
from lsgm.apps.chain import model_chain, respace, seeded
from lsgm.apps.inpaint import fit_known_pixels, known_pixel_residual, unknown_rmse
from lsgm.apps.masks import load_mask
from lsgm.models import DDPM, LSGM, PixelSGM
from lsgm.score_net import ScoreNet
from sde.gaussian import gaussian

# A correlated Gaussian over 2×2 "images" (D = 4) whose exact ε drives the checks.
MEAN = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64)
COV = 0.25 * torch.tensor([[1.0, 0.8, 0.6, 0.3], [0.8, 1.0, 0.7, 0.5], [0.6, 0.7, 1.0, 0.8], [0.3, 0.5, 0.8, 1.0]],
                          dtype=torch.float64)


class ExactEps(nn.Module):
    """The exact ε of N(MEAN, COV) under a VP-SDE at continuous time t (exact at a chain's steps t = i/T when the
    chain's ᾱ_i equals ᾱ(i/T), as `VPSDE.discretize` makes it for the cosine schedule)."""

    def __init__(self, vp):
        super().__init__()
        self.vp, self.data = vp, gaussian(MEAN, COV)

    def forward(self, z_t, t, cond=None, context=None):
        mean_coeff, std = self.vp.marginal(t.double())
        return self.data.eps(z_t, mean_coeff, std).to(z_t.dtype)


def gaussian_model(discrete_steps=None):
    vp = sde.VPSDE("cosine")
    if discrete_steps is not None:
        return DDPM(ExactEps(vp), vp, discrete_steps, data_shape=(1, 2, 2), levels=None).double()
    return PixelSGM(ExactEps(vp), vp, data_shape=(1, 2, 2), levels=None, mixed=False).double()


def pixel_model():
    torch.manual_seed(0)
    net = ScoreNet(1, 8, channels=16, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0)
    return DDPM(net, sde.VPSDE("linear"), 100, data_shape=(1, 8, 8), levels=17).eval()


def latent_model():
    torch.manual_seed(0)
    vae = nvae.NVAE(channels=8, num_scales=2, groups_per_scale=1, latent_channels=2, dropout=0.0, decoder_expansion=2)
    net = ScoreNet(vae.latent_shape[0], vae.latent_shape[1], channels=16, channel_mult=(1,), num_res_blocks=1,
                   attn_resolutions=(), dropout=0.0)
    return LSGM(net, sde.VPSDE("geometric"), vae=vae, data_shape=(1, 8, 8), levels=17).eval()


def digits_like(n, seed=0):
    """Images on the 17-level grid in [−1, 1]."""
    levels = torch.randint(0, 17, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    return levels.float() / 8 - 1


# --- RePaint's schedule and the respaced chain ---------------------------------------------------------------------
def reverse_steps(times):
    return sum(after < now for now, after in zip(times, times[1:]))


def test_repaint_schedule_of_the_paper_has_2410_model_steps():
    times = repaint_schedule(250, 10, 10)
    assert times[0] == 250 and times[-1] == 0
    assert all(abs(now - after) == 1 for now, after in zip(times, times[1:]))
    assert reverse_steps(times) == 2410 and len(times) - 1 - 2410 == 24 * 9 * 10  # 24 jump points × 9 × 10 up-steps
    calls = []
    _, nfe = repaint(lambda x, t: calls.append(t) or torch.zeros_like(x), model_chain(gaussian_model(), 250),
                     torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1), times)
    assert nfe == 2410 == len(calls)


def test_repaint_schedule_against_a_hand_count():
    # t_T = 6, jumps of 2 at s = 1 and 3, once each: 6→3, up to 5, 5→1, up to 3, 3→0.
    assert repaint_schedule(6, 2, 2) == [6, 5, 4, 3, 4, 5, 4, 3, 2, 1, 2, 3, 2, 1, 0]
    assert reverse_steps(repaint_schedule(6, 2, 2)) == 6 + 2 * 1 * 2
    assert repaint_schedule(4, 10, 10) == [4, 3, 2, 1, 0]  # no room for a jump: plain ancestral sampling
    with pytest.raises(ValueError, match="positive"):
        repaint_schedule(0, 10, 10)


def test_respaced_chain_keeps_the_marginals():
    schedule = sde.VPSDE("linear").discretize(1000)
    chain = respace(schedule, 250)
    kept = [round(t * 1000) for t in chain.times]
    assert kept[0] == 1 and kept[-1] == 1000 and len(kept) == 250
    torch.testing.assert_close(chain.schedule.alpha_bars, schedule.alpha_bars[torch.tensor(kept) - 1], rtol=1e-12,
                               atol=0)
    torch.testing.assert_close(respace(schedule, 1000).schedule.betas, schedule.betas, rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="2..1000"):
        respace(schedule, 1001)


# --- inpainting ---------------------------------------------------------------------------------------------------
def test_pixel_inpainting_keeps_the_known_pixels_and_never_reads_the_unknown():
    model, x = pixel_model(), digits_like(3)
    mask = make_masks("half", 3, (8, 8))
    result = inpaint(model, x, mask, t_T=8, jump_length=2, jump_n_sample=2, seed=0)
    assert torch.equal(result[mask.bool().expand_as(x)], x[mask.bool().expand_as(x)])
    assert torch.equal(model.to_data_grid(result), result)
    scrambled = torch.where(mask.bool(), x, torch.rand_like(x))
    assert torch.equal(inpaint(model, scrambled, mask, t_T=8, jump_length=2, jump_n_sample=2, seed=0), result)
    with pytest.raises(ValueError, match="broadcast"):
        inpaint(model, x, torch.ones(1, 1, 4, 4), t_T=8)


def gaussian_inpainting_errors(jump_n_sample, n=400):
    """Sample mean and variance of the unknown pixels (1, 2) given known pixels (0, 3), in standard errors of n
    draws from the analytic conditional N(μ_u + Σ_uk Σ_kk⁻¹(x_k − μ_k), Σ_uu − Σ_uk Σ_kk⁻¹ Σ_ku)."""
    known, unknown = torch.tensor([True, False, False, True]), torch.tensor([False, True, True, False])
    x_known = torch.tensor([0.8, 0.0, 0.0, -0.3], dtype=torch.float64)
    gain = COV[unknown][:, known] @ torch.linalg.inv(COV[known][:, known])
    mean = MEAN[unknown] + gain @ (x_known[known] - MEAN[known])
    var = (COV[unknown][:, unknown] - gain @ COV[known][:, unknown]).diagonal()
    samples = inpaint(gaussian_model(), x_known.reshape(1, 1, 2, 2).expand(n, 1, 2, 2), known.reshape(1, 1, 2, 2),
                      t_T=100, jump_length=10, jump_n_sample=jump_n_sample, seed=0).reshape(n, 4)[:, unknown]
    mean_error = (samples.mean(0) - mean) / (var / n).sqrt()
    var_error = (samples.var(0) / var - 1) / math.sqrt(2 / (n - 1))
    return mean_error, var_error


def test_gaussian_inpainting_samples_the_analytic_conditional():
    """With the exact ε of a correlated Gaussian, RePaint's samples have the conditional mean and variance within
    4 standard errors of n = 400 draws (SE of a mean √(σ²/n), of a variance ratio √(2/(n − 1)) ≈ 0.071). RePaint is
    approximate: over 20 000 draws its bias here is about 1.5 SE (mean) and 1 SE (variance) at n = 400. Without
    resampling (jump_n_sample = 1, plain replacement of the known part) the bias is 5–7 SE, and the check fails."""
    mean_error, var_error = gaussian_inpainting_errors(jump_n_sample=10)
    assert mean_error.abs().max() < 4 and var_error.abs().max() < 4, (mean_error, var_error)
    mean_error, var_error = gaussian_inpainting_errors(jump_n_sample=1)
    assert max(mean_error.abs().max(), var_error.abs().max()) > 4, (mean_error, var_error)


def test_inpainting_sample_mean_estimates_the_conditional_mean():
    """samples = S: the mean of S RePaint draws of one image — the same draws as inpainting the image repeated S times
    with the same seed — within 4 standard errors √(var/S) of the analytic conditional mean (Gaussian, exact ε);
    a bad count is refused."""
    known = torch.tensor([True, False, False, True]).reshape(1, 1, 2, 2)
    x = torch.tensor([0.8, 0.0, 0.0, -0.3], dtype=torch.float64).reshape(1, 1, 2, 2)
    options = {"t_T": 100, "jump_length": 10, "jump_n_sample": 10, "seed": 0}
    n = 400
    estimate = inpaint(gaussian_model(), x, known, samples=n, **options)
    draws = inpaint(gaussian_model(), x.expand(n, 1, 2, 2), known, **options)
    assert torch.allclose(estimate, draws.mean(0, keepdim=True), atol=1e-12)
    flat = known.flatten()
    gain = COV[~flat][:, flat] @ torch.linalg.inv(COV[flat][:, flat])
    mean = MEAN[~flat] + gain @ (x.flatten()[flat] - MEAN[flat])
    var = (COV[~flat][:, ~flat] - gain @ COV[flat][:, ~flat]).diagonal()
    error = (estimate.flatten()[~flat] - mean) / (var / n).sqrt()
    assert error.abs().max() < 4, error
    assert torch.allclose(estimate.flatten()[flat], x.flatten()[flat], atol=1e-12)
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        inpaint(gaussian_model(), x, known, samples=0, **options)


def test_guidance_conditions_what_repaint_cannot_replace():
    """DPS guidance alone (no element replaced, mask 0) with the exact ε of the correlated Gaussian and the misfit
    ‖m ⊙ (x̂_0 − y)‖ of the known pixels (0, 3): ζ = 0.1 brings the unknown pixels' sample mean within 4 SE of the
    analytic conditional mean (0.3 SE here at n = 400) and the known pixels within 0.1 of y (RMSE 0.04), where the
    unguided chain samples the prior (mean 18 SE away, known pixels 0.63 off). DPS is approximate: its variance is
    about 0.8 of the conditional's here, so only the mean is checked."""
    model, n = gaussian_model(), 400
    known = torch.tensor([True, False, False, True])
    y = torch.tensor([0.8, 0.0, 0.0, -0.3], dtype=torch.float64).reshape(1, 1, 2, 2).expand(n, 1, 2, 2)
    gain = COV[~known][:, known] @ torch.linalg.inv(COV[known][:, known])
    mean = MEAN[~known] + gain @ (y[0].flatten()[known] - MEAN[known])
    se = ((COV[~known][:, ~known] - gain @ COV[known][:, ~known]).diagonal() / n).sqrt()
    mask = known.double().reshape(1, 1, 2, 2)

    def residual(x0):
        return ((x0 - y) * mask).flatten(1).norm(dim=1)

    chain, times = model_chain(model, 100), repaint_schedule(100, 10, 10)
    errors = {}
    for zeta in (0.0, 0.1):
        with seeded(0):
            x, calls = repaint(model.eps_fn(), chain, y, torch.zeros_like(mask), times, None, residual, zeta)
        flat = x.reshape(n, 4)
        errors[zeta] = ((flat[:, ~known].mean(0) - mean) / se, (flat[:, known] - y[0].flatten()[known]).pow(2).mean())
        assert calls == reverse_steps(times)
    assert errors[0.1][0].abs().max() < 4 and errors[0.1][1].sqrt() < 0.1, errors[0.1]
    assert errors[0.0][0].abs().max() > 10 and errors[0.0][1].sqrt() > 0.4, errors[0.0]


def test_latent_mask_on_every_group_grid():
    """Two scales: a top group on the 2×2 grid (cells of 4×4 pixels), a finer one on 4×4 (cells of 2×2 pixels) packed
    onto the 2×2 grid as 4 channels per channel, channel 4c + 2a + b at (i, j) holding fine cell (2i + a, 2j + b)."""
    model = latent_model()
    vae = model.vae
    mask = torch.ones(1, 1, 8, 8)
    mask[..., :4, :4] = 0  # the top-left top cell (and its four fine cells) entirely unknown
    mask[..., 7, 7] = 0  # one pixel of the bottom-right top cell, which is one pixel of fine cell (3, 3)
    for threshold, top, fine_33 in [(1.0, [0, 1, 1, 0], 0), (0.9, [0, 1, 1, 1], 0), (0.5, [0, 1, 1, 1], 1)]:
        packed = model.known_latents(mask, threshold)
        assert packed.shape == (1, *vae.latent_shape) == (1, 2 + 8, 2, 2)
        assert packed[0, :2].flatten(1).tolist() == [top, top]
        fine = vae.unpack(packed)[1][0]
        assert (fine[:, :2, :2] == 0).all() and fine[:, 3, 3].tolist() == [fine_33, fine_33]
        known = torch.ones(4, 4, dtype=torch.bool)
        known[:2, :2] = False
        known[3, 3] = False
        assert (fine[:, known] == 1).all()


def test_latent_inpainting_end_to_end():
    """A tiny untrained LSGM: the known pixels survive, the unknown ones are never read, the result is on the data
    grid, and the consistency step raises the decoder's likelihood of the known pixels."""
    model, x = latent_model(), digits_like(2, seed=1)
    mask = make_masks("lines", 2, (8, 8))
    options = {"t_T": 6, "jump_length": 2, "jump_n_sample": 2, "seed": 0}
    result = inpaint(model, x, mask, consistency_steps=5, **options)
    assert result.shape == x.shape and torch.equal(model.to_data_grid(result), result)
    assert torch.equal(result * mask, x * mask)
    scrambled = torch.where(mask.bool(), x, torch.rand_like(x))
    assert torch.equal(inpaint(model, scrambled, mask, consistency_steps=5, **options), result)

    z = model.encode(x, mean=True)
    with torch.no_grad():
        before = (model.decoder(z).log_prob_elementwise(x) * mask).sum()
        fitted = fit_known_pixels(model, z, x, mask, steps=20)
        after = (model.decoder(fitted).log_prob_elementwise(x) * mask).sum()
    assert after > before, (before, after)  # an untrained decoder hardly depends on z: the gain is small here


def test_latent_guidance_fits_the_known_pixels_no_latent_cell_holds():
    """every_second leaves no latent cell half known, so RePaint alone samples the latents unconditionally; DPS
    guidance through the decoder lowers the known pixels' misfit of the decoded latents (`known_pixel_residual`,
    before the known pixels are pasted back), the more the larger ζ (this untrained decoder hardly depends on z, so
    the steps are large and the gain small: 3% at ζ = 100; the exact check is the Gaussian one above); a pixel model
    has no decoder to guide by, and ζ < 0 is refused."""
    model, x = latent_model(), digits_like(4, seed=1)
    mask = make_masks("every_second", 4, (8, 8))
    options = {"t_T": 10, "jump_length": 2, "jump_n_sample": 1, "seed": 0}
    misfit = known_pixel_residual(model, x, mask)
    chain, times = model_chain(model, 10), repaint_schedule(10, 2, 1)
    assert model.known_latents(mask, 0.5).sum() == 0
    fits = {}
    for zeta in (0.0, 10.0, 100.0):
        with seeded(0):
            z_known = model.encode(x, mean=True)
            z, _ = repaint(model.eps_fn(), chain, z_known, model.known_latents(mask, 0.5), times, None, misfit, zeta)
        with torch.no_grad():
            fits[zeta] = misfit(z).mean()
    assert fits[100.0] < fits[10.0] < fits[0.0] and fits[100.0] < 0.98 * fits[0.0], fits
    result = inpaint(model, x, mask, guidance=1.0, **options)
    assert torch.equal(result * mask, x * mask) and torch.equal(model.to_data_grid(result), result)
    with pytest.raises(ValueError, match="guidance differentiates a latent model's decoder"):
        inpaint(pixel_model(), x, mask, guidance=1.0, **options)
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="guidance must be a number ≥ 0"):
            inpaint(model, x, mask, guidance=bad, **options)
    with pytest.raises(ValueError, match="guidance needs a residual"):
        repaint(model.eps_fn(), chain, z_known, mask.new_zeros(1, *z_known.shape[1:]), times, None, None, 1.0)


# --- interpolation ------------------------------------------------------------------------------------------------
def test_interpolation_at_t0_returns_the_endpoints():
    model, x0, x1 = pixel_model(), digits_like(2, seed=2), digits_like(2, seed=3)
    images = interpolate(model, x0, x1, 0, [0.0, 0.5, 1.0], seed=0)
    assert images.shape == (2, 3, 1, 8, 8)
    assert torch.equal(images[:, 0], x0) and torch.equal(images[:, 2], x1)
    assert torch.equal(images[:, 1], model.to_data_grid((x0 + x1) / 2))
    with pytest.raises(ValueError, match="integer step.*0..100"):
        interpolate(model, x0, x1, 101, [0.5])


def test_interpolation_mean_matches_the_gaussian_posterior():
    """Exact Gaussian, DDPM chain of T = 100, t = 50: encoding both sources with one ε makes x̄_t the encoding of the
    pixel mixture x_λ = (1 − λ)x_0 + λx_1, so the reverse chain returns, on average,
        E[x̄_0] = μ + ᾱ_t Σ (ᾱ_t Σ + (1 − ᾱ_t) I)⁻¹ (x_λ − μ),
    whose spread is Cov = Σ − ᾱ_t Σ M Σ + ᾱ_t(1 − ᾱ_t) Σ M² Σ, M = (ᾱ_t Σ + (1 − ᾱ_t) I)⁻¹. Checked within 4 SE of
    n = 400 pairs for λ = 0, ¼, 1."""
    model, n, t, lambdas = gaussian_model(discrete_steps=100), 400, 50, [0.0, 0.25, 1.0]
    x0 = torch.tensor([0.9, -0.5, 0.2, 0.6], dtype=torch.float64)
    x1 = torch.tensor([-0.4, 0.3, 1.1, -0.2], dtype=torch.float64)
    images = interpolate(model, x0.reshape(1, 1, 2, 2).expand(n, 1, 2, 2), x1.reshape(1, 1, 2, 2).expand(n, 1, 2, 2),
                         t, lambdas, seed=0).reshape(n, 3, 4)
    alpha_bar = model.schedule.alpha_bars[t - 1]
    inverse = torch.linalg.inv(alpha_bar * COV + (1 - alpha_bar) * torch.eye(4, dtype=torch.float64))
    spread = COV - alpha_bar * COV @ inverse @ COV + alpha_bar * (1 - alpha_bar) * COV @ inverse @ inverse @ COV
    for column, lam in enumerate(lambdas):
        expected = MEAN + alpha_bar * COV @ inverse @ ((1 - lam) * x0 + lam * x1 - MEAN)
        error = (images[:, column].mean(0) - expected) / (spread.diagonal() / n).sqrt()
        assert error.abs().max() < 4, (lam, error)


def test_ode_interpolation_returns_the_endpoints():
    model = gaussian_model()
    x0 = torch.tensor([[0.9, -0.5, 0.2, 0.6], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64).reshape(2, 1, 2, 2)
    x1 = torch.tensor([[-0.4, 0.3, 1.1, -0.2], [0.5, -0.5, 0.0, 0.9]], dtype=torch.float64).reshape(2, 1, 2, 2)
    images = interpolate_ode(model, x0, x1, [0.0, 0.5, 1.0], rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(images[:, 0], x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(images[:, 2], x1, atol=1e-4, rtol=0)
    assert not torch.allclose(images[:, 1], (x0 + x1) / 2, atol=1e-2)  # the middle is decoded, not mixed in pixels


def test_slerp_keeps_the_norm_between_equal_norm_ends():
    a, b = torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([[0.0, 3.0, 0.0]])
    path = slerp(a, b, torch.tensor([0.0, 0.5, 1.0]).reshape(3, 1, 1))
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[2], b)
    torch.testing.assert_close(path[1], torch.tensor([[3 / math.sqrt(2), 3 / math.sqrt(2), 0.0]]))
    torch.testing.assert_close(slerp(a, a, torch.tensor([0.3]).reshape(1, 1, 1))[0], a)  # θ = 0: linear


def test_latent_interpolation_end_to_end():
    model, x0, x1 = latent_model(), digits_like(2, seed=4), digits_like(2, seed=5)
    images = interpolate(model, x0, x1, 3, [0.0, 0.5, 1.0], seed=0)
    assert images.shape == (2, 3, 1, 8, 8) and torch.equal(model.to_data_grid(images), images)
    at_zero = interpolate(model, x0, x1, 0, [0.0], seed=0)[:, 0]
    with torch.no_grad():
        reconstruction = model.to_data_grid(model.decode(model.encode(x0, mean=True), mean=True))
    assert torch.equal(at_zero, reconstruction)


# --- masks ----------------------------------------------------------------------------------------------------------
def test_masks_have_their_known_fractions_and_are_seeded(tmp_path):
    size = (8, 8)
    kinds = ("half", "lines", "every_second", "expand")
    unknown = {kind: 1 - make_masks(kind, 4, size).mean().item() for kind in kinds}
    assert unknown == {"half": 0.5, "lines": 0.5, "every_second": 0.75, "expand": 0.75}
    assert make_masks("every_second", 1, size)[0, 0, ::2, ::2].eq(1).all()
    for kind in ("wide", "narrow"):
        masks = make_masks(kind, 16, (32, 32), seed=3)
        assert torch.equal(masks, make_masks(kind, 16, (32, 32), seed=3))
        assert not torch.equal(masks, make_masks(kind, 16, (32, 32), seed=4))
        assert 0.02 < 1 - masks.mean().item() < 0.7
    picture = torch.zeros(16, 16, dtype=torch.uint8)
    picture[:, :8] = 255  # left half white: known
    Image.fromarray(picture.numpy()).save(tmp_path / "mask.png")
    assert torch.equal(load_mask(tmp_path / "mask.png", size), make_masks("half", 1, size))
    assert make_masks(str(tmp_path / "mask.png"), 3, size).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown mask"):
        make_masks("square", 1, size)


# --- the commands -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny LSGM trained for one step by the project's trainer (digits)."""
    from hydra import compose, initialize_config_dir

    from lsgm.train import Trainer

    overrides = ["logger=none", "device=cpu", "train.steps=1", "train.stage1_steps=0", "train.batch_size=16",
                 "train.eval_repeats=1", "train.num_samples=4", "vae.params.channels=8",
                 "vae.params.groups_per_scale=1", "score.net.channels=16", "score.net.num_res_blocks=1"]
    config_dir = str(Path(__file__).resolve().parents[2] / "configs")
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    run_dir = tmp_path_factory.mktemp("run")
    trainer = Trainer(cfg, run_dir)
    try:
        trainer.fit()
        return trainer.save("last.pt")
    finally:
        trainer.close()


def png_size(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_inpaint_command_writes_a_grid_and_rmse_table(checkpoint, tmp_path):
    from lsgm.apps.inpaint import main

    out = tmp_path / "inpaint.png"
    rows = main([f"ckpt={checkpoint}", "masks=[half,every_second]", "num_images=3", "t_T=4", "jump_length=2",
                 "jump_n_sample=2", "consistency_steps=2", "samples=2", f"out={out}"])
    assert png_size(out) == (2 + 3 * 66, 2 + 6 * 66)  # 8×8 digits shown 8× with 2-pixel gaps: 3 images × 6 rows
    with out.with_suffix(".csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [row["mask"] for row in table] == ["half", "every_second"]
    assert float(table[1]["unknown_fraction"]) == 0.75 and all(float(row["train_mean_rmse"]) > 0 for row in table)
    assert rows[0]["rmse"] == float(table[0]["rmse"])


def test_interpolate_command_writes_a_grid(checkpoint, tmp_path):
    from lsgm.apps.interpolate import main

    out = tmp_path / "interp.png"
    main([f"ckpt={checkpoint}", "t_fractions=[0,0.002,0.004]", "lambdas=[0,0.5,1]", "pairs=[[0,1]]", f"out={out}"])
    assert png_size(out) == (2 + 5 * 66, 2 + 3 * 66)  # columns x0, 3 λ's, x1; rows t = 0, 2, 4


def test_commands_reject_bad_arguments_with_one_message(checkpoint, tmp_path):
    from lsgm.apps import inpaint as inpaint_function
    from lsgm.apps.inpaint import main as inpaint_main
    from lsgm.apps.interpolate import main

    with pytest.raises(SystemExit, match=r"unknown argument steps=3; valid: ckpt, t_fractions, "):
        main([f"ckpt={checkpoint}", "steps=3"])
    with pytest.raises(SystemExit, match="missing required argument.*ckpt="):
        main([])
    with pytest.raises(SystemExit, match="error: no checkpoint"):
        main([f"ckpt={tmp_path / 'missing.pt'}"])
    with pytest.raises(SystemExit, match="error: unknown mask 'square'"):
        inpaint_main([f"ckpt={checkpoint}", "masks=[square]"])
    with pytest.raises(SystemExit, match="samples must be a positive integer"):
        inpaint_main([f"ckpt={checkpoint}", "samples=0"])
    with pytest.raises(SystemExit, match="guidance must be"):
        inpaint_main([f"ckpt={checkpoint}", "guidance=-1"])
    assert callable(inpaint_function)  # importing the command module leaves lsgm.apps.inpaint the function


def test_inpainting_benchmark_scores_every_method_on_the_same_masks(checkpoint, tmp_path):
    """benchmarks/inpainting.py on the tiny checkpoint: one row per mask with every latent method's RMSE (the guided
    column included), the mean fill equal to the command's baseline, the flags from the RMSEs, and the files."""
    from ..conftest import benchmark_module

    with benchmark_module("inpainting") as module:
        rows = module.main(["--latent", str(checkpoint), "--masks", "every_second", "half", "--num-images", "3",
                            "--seeds", "0", "--t-T", "4", "--jump-length", "1", "--jump-n-sample", "2",
                            "--consistency-steps", "2", "--samples", "2", "--guidance", "1", "--threads", "1",
                            "--out", str(tmp_path)])
        with pytest.raises(SystemExit):
            module.main(["--latent", str(checkpoint), "--guidance", "-1"])
    assert [row["mask"] for row in rows] == ["every_second", "half"]
    model = apps_cli.load_model(str(checkpoint), "cpu")
    images = apps_cli.dataset_images(model, "test")[:3]
    mask = make_masks("half", 3, (8, 8))
    fill = mask * images + (1 - mask) * apps_cli.dataset_images(model, "train").mean(0, keepdim=True)
    assert rows[1]["mean_fill_rmse"] == pytest.approx(unknown_rmse(fill, images, mask), abs=1e-6)
    for row in rows:
        for method in ("latent", "latent_step", "latent_mean", "latent_guided", "latent_guided_step"):
            assert 0 < row[f"{method}_rmse"] < 2, (method, row)
        assert row["latent_guided_beats_fill"] == (row["latent_guided_rmse"] < row["mean_fill_rmse"])
        assert row["pixel_rmse"] is None and row["latent_guided_step_at_most_pixel"] is None
    assert (tmp_path / "inpainting.csv").is_file() and "latent, guided" in (tmp_path / "inpainting.md").read_text()
