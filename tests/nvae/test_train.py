"""Stage-1 training: schedules, the regularised loss, evaluation and a smoke run on digits."""

import math

import pytest
import torch

import nvae
from nvae.train import (
    FitConfig,
    backward_and_step,
    evaluate_bpd,
    fit,
    kl_warmup_weight,
    make_optimizer,
    progress,
    training_loss,
    warmup_cosine_lr,
)

from .conftest import TINY


def test_schedules():
    assert progress(50, 1.0, 100, None) == 0.5
    assert progress(10, 30.0, 100, 60.0) == 0.5
    assert kl_warmup_weight(0.0, 0.3, 1e-4) == 1e-4
    assert kl_warmup_weight(0.15, 0.3) == pytest.approx(0.5)
    assert kl_warmup_weight(0.5, 0.3) == 1.0 and kl_warmup_weight(0.0, 0.0) == 1.0
    assert warmup_cosine_lr(0.01, 1e-2, 1e-4, 0.02) == pytest.approx(5e-3)
    assert warmup_cosine_lr(0.02, 1e-2, 1e-4, 0.02) == pytest.approx(1e-2)
    assert warmup_cosine_lr(0.51, 1e-2, 1e-4, 0.02) == pytest.approx(0.5 * (1e-2 + 1e-4))
    assert warmup_cosine_lr(1.0, 1e-2, 1e-4, 0.02) == pytest.approx(1e-4)


def test_training_loss_adds_the_regularisers(digits):
    torch.manual_seed(0)
    vae = nvae.NVAE(**TINY)
    cfg = FitConfig(spectral_weight=0.1, norm_weight=0.2, sn_iterations=0)
    torch.manual_seed(1)
    terms = training_loss(vae, digits[:8], 0.5, cfg)
    torch.manual_seed(1)
    plain = vae.loss(digits[:8], 0.5)["loss"]
    expected = plain + 0.1 * vae.spectral_norm_loss(0) + 0.2 * vae.norm_loss()
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="adamax"):
        make_optimizer(vae.parameters(), FitConfig(optimizer="sgd"))


def test_evaluate_bpd_is_reproducible_and_leaves_the_rng_alone(digits):
    torch.manual_seed(0)
    vae = nvae.NVAE(**TINY).train()
    state = torch.get_rng_state()
    a, b = evaluate_bpd(vae, digits[:32], k=2), evaluate_bpd(vae, digits[:32], k=2)
    assert a == b and torch.equal(state, torch.get_rng_state()) and vae.training
    assert 0.0 < a < 2 * math.log2(17)


def test_training_smoke(trained):
    """A few hundred steps on 512 digits: validation bpd falls far below its start, nothing is NaN."""
    vae, result, _ = trained
    val = [r["val_bpd"] for r in result.history]
    assert result.history[0]["step"] == 0 and result.steps == 240
    assert result.skipped_steps == 0 and all(math.isfinite(v) for v in val)
    assert all(math.isfinite(r["loss"]) for r in result.history[1:])
    assert val[-1] < val[0] - 1.0 and val[-1] < 2.6, val  # uniform: 4.09, independent pixels: 2.43
    assert result.best_val_bpd == min(val)
    assert all(torch.isfinite(p).all() for p in vae.parameters())


def test_fit_restores_the_best_checkpoint(digits, tmp_path):
    torch.manual_seed(0)
    vae = nvae.NVAE(**TINY)
    path = tmp_path / "best.pt"
    cfg = FitConfig(max_steps=30, eval_every=10, lr=2e-2, checkpoint_path=str(path))
    seen = []
    result = fit(vae, iter([(digits[:16],)] * 30), cfg, val_x=digits[16:48], callback=seen.append)
    assert seen == result.history and [r["step"] for r in seen] == [0, 10, 20, 30]
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == result.best_step and saved["val_bpd"] == result.best_val_bpd
    restored = nvae.NVAE(**TINY)
    restored.load_state_dict(saved["model"])
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), vae.state_dict().values()))
    assert evaluate_bpd(vae, digits[16:48]) == pytest.approx(result.best_val_bpd, abs=1e-5)


def test_fit_stops_early_without_improvement(digits):
    torch.manual_seed(0)
    vae = nvae.NVAE(**TINY)
    frozen = FitConfig(max_steps=100, eval_every=10, lr=0.0, min_lr=0.0, patience=1)
    result = fit(vae, iter([digits[:16]] * 100), frozen, val_x=digits[16:48])
    assert result.steps == 10 and result.best_step == 0  # an unchanged model never improves


def test_a_non_finite_loss_skips_the_step():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    assert not backward_and_step((w * float("nan")).sum(), opt, [w], grad_clip=1.0)
    assert torch.equal(w.detach(), torch.ones(3))
    assert backward_and_step((10 * w).sum(), opt, [w], grad_clip=1.0)  # gradient norm 17.3 clipped to 1
    assert torch.allclose(w.detach(), torch.full((3,), 1 - 0.1 / math.sqrt(3)))
