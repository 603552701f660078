"""Latent Diffusion as a model kind: the latent scale, the two stages through the one trainer, exact resume with a
discriminator, a second stage from a separate first-stage run, and the shared samplers, guidance and apps."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from lsgm.build import build_model, load, load_first_stage
from lsgm.checkpoint import CheckpointError, load_checkpoint
from lsgm.data import load_dataset
from lsgm.models import LikelihoodUndefined
from lsgm.train import Trainer

from .conftest import CONFIG_DIR, train

TINY_LDM = [
    "logger=none",
    "train.steps=8",
    "train.stage1_steps=4",
    "train.batch_size=16",
    "train.eval_every=1000",
    "train.sample_every=1000",
    "train.checkpoint_every=1000",
    "train.num_samples=4",
    "train.final_eval.max_images=8",
    "autoencoder.params.channels=8",
    "autoencoder.params.channel_mult=[1,1]",
    "autoencoder.loss.disc_start=2",
    "autoencoder.discriminator.channels=8",
    "score.net.channels=8",
    "score.net.num_res_blocks=1",
    "sampler=heun",
    "sampler.options.steps=3",
]


def ldm_config(*overrides: str, experiment: str = "digits_ldm"):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[f"experiment={experiment}", *TINY_LDM, *overrides])


def digits(count: int = 64) -> torch.Tensor:
    return load_dataset("digits", split="train").x[:count]


def tiny_model(*overrides: str, experiment: str = "digits_ldm"):
    torch.manual_seed(0)
    return build_model(ldm_config(*overrides, experiment=experiment), (1, 8, 8), 17, num_classes=10).eval()


def weights(module: torch.nn.Module) -> dict:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def assert_same(a: dict, b: dict, atol: float = 0.0):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=atol, rtol=0), name


@pytest.mark.parametrize("regularizer", ["kl", "vq"])
def test_scale_by_std_gives_unit_variance_latents(regularizer):
    model = tiny_model(f"autoencoder=digits_{regularizer}")
    x = digits()
    numbers = model.prepare_prior(x, None)
    z = model.encode(x, mean=True).double()
    assert abs(z.std().item() - 1.0) < 1e-5
    assert numbers["scale_factor"] == pytest.approx(1.0 / model.autoencoder.latents(x).double().std().item(), 1e-5)
    assert model.scale_factor.item() != 1.0  # an untrained autoencoder's latents are not unit-variance already


def test_a_fixed_scale_factor_is_kept_and_scales_encode_and_decode():
    model = tiny_model("autoencoder.scale_factor=0.5")
    x = digits(8)
    assert model.prepare_prior(x, None) == {"scale_factor": 0.5}
    latents = model.autoencoder.latents(x)
    assert torch.allclose(model.encode(x, mean=True), 0.5 * latents)
    assert torch.allclose(model.decode(0.5 * latents), model.autoencoder.decode(latents))


def test_kl_encode_samples_the_posterior_from_the_generator_and_mean_is_its_mode():
    model = tiny_model()
    x = digits(8)
    draws = [model.encode(x, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    posterior = model.autoencoder.encode(x)
    assert torch.allclose(model.encode(x, mean=True), posterior.mode())
    assert not torch.allclose(draws[0], posterior.mode())


def test_an_ldm_has_no_likelihood_and_says_so():
    model = tiny_model()
    assert not model.has_likelihood
    with pytest.raises(LikelihoodUndefined, match="no NLL bound"):
        model.nll(digits(4))


@pytest.mark.parametrize("regularizer", ["kl", "vq"])
def test_two_stages_in_one_run_freeze_the_first_stage_and_resume_exactly(tmp_path, regularizer):
    """Stage 1 trains the autoencoder and (from disc_start) the discriminator; stage 2 changes neither, not even a
    VQ codebook, and sets the latent scale; a run stopped inside stage 1 (after disc_start) and resumed ends with
    the same weights as a straight run, discriminator and its optimizer included."""
    cfg = ldm_config(f"autoencoder=digits_{regularizer}")
    straight = Trainer(cfg, tmp_path / "straight")
    stage = {}
    step = straight.train_step

    def recording_step(x, y=None):
        if straight.progress.step in (0, 4):  # before stage 1, before stage 2
            stage[straight.progress.step] = weights(straight.model)
        record = step(x, y)
        stage.setdefault("phases", []).append(record["phase"])
        return record

    straight.train_step = recording_step
    straight.fit()
    end = weights(straight.model)
    straight.close()
    assert stage["phases"] == ["autoencoder"] * 4 + ["score"] * 4
    first_stage = [name for name in end if name.startswith("autoencoder.")]
    discriminator = [name for name in end if name.startswith("first_stage_loss.discriminator.")
                     and name.endswith("weight")]
    score = [name for name in end if name.startswith("score_net.")]
    assert first_stage and discriminator and score
    changed = lambda a, b, names: any(not torch.equal(a[n], b[n]) for n in names)  # noqa: E731
    assert changed(stage[0], stage[4], first_stage) and changed(stage[0], stage[4], discriminator)
    assert not changed(stage[4], end, first_stage + discriminator)  # frozen in stage 2 (codebook buffers included)
    assert not changed(stage[0], stage[4], score) and changed(stage[4], end, score)
    assert end["scale_factor"].item() != 1.0

    resumed_dir = tmp_path / "resumed"
    train(cfg, resumed_dir, stop_at=3)
    assert load_checkpoint(resumed_dir / "checkpoints" / "last.pt")["disc_optimizer"] is not None
    resumed = train(cfg, resumed_dir)
    assert_same(end, weights(resumed.model), atol=1e-6)


def test_the_final_evaluation_reports_the_reconstruction_error_and_samples(tmp_path):
    trainer = train(ldm_config("train.eval_every=4"), tmp_path, close=False)
    summary = trainer.final_evaluation()
    trainer.close()
    assert "test_bpd" not in summary and 0 < summary["test_rmse"] < 2
    model = load(summary["checkpoint"])
    x = load_dataset("digits", split="test").x[:8]
    rmse = model.reconstruction_error(x)
    assert summary["test_rmse"] == pytest.approx(rmse.mean().item(), rel=1e-5)
    images, nfe = model.sample(6, sampler="dpm2m", steps=4, generator=torch.Generator().manual_seed(0))
    assert images.shape == (6, 1, 8, 8) and nfe == 4
    assert torch.equal(images, model.to_data_grid(images))  # on the data's 17 levels


def test_a_second_stage_starts_from_a_separate_first_stage_run(tmp_path):
    first = train(ldm_config("train.steps=4"), tmp_path / "first")
    trained = {n: v for n, v in weights(first.model).items() if n.startswith("autoencoder.")}
    second = Trainer(ldm_config(f"train.first_stage={tmp_path / 'first' / 'checkpoints' / 'last.pt'}",
                                "train.stage1_steps=0", "train.steps=2"), tmp_path / "second")
    assert_same(trained, {n: v for n, v in weights(second.model).items() if n.startswith("autoencoder.")})
    assert second.phase(0) == "score"
    second.fit()
    second.close()
    assert second.model.scale_factor.item() != 1.0


def test_a_first_stage_from_a_checkpoint_without_an_autoencoder_is_refused(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="no first-stage autoencoder"):
        load_first_stage(tiny_model(), tiny_checkpoint)


def test_the_class_conditional_ldm_samples_with_guidance_through_the_shared_sampler():
    model = tiny_model(experiment="digits_class_ldm")
    labels = torch.arange(4)
    images, nfe = model.sample(4, sampler="dpm2m", steps=3, y=labels, guidance=2.0,
                               generator=torch.Generator().manual_seed(0))
    assert images.shape == (4, 1, 8, 8) and nfe == 3
    again, _ = model.sample(4, sampler="dpm2m", steps=3, y=labels, guidance=2.0,
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, again)


def test_known_latents_mark_the_cells_whose_pixels_are_all_known():
    model = tiny_model()
    mask = torch.ones(1, 1, 8, 8)
    mask[..., :3, :] = 0  # rows 0..2 unknown: latent rows 0 (pixels 0-1) and 1 (pixels 2-3) are not all known
    known = model.known_latents(mask)
    assert known.shape == (1, 3, 4, 4)
    assert known[..., :2, :].sum() == 0 and known[..., 2:, :].min() == 1
    half = model.known_latents(mask, threshold=0.5)
    assert half[..., 1, :].min() == 1 and half[..., 0, :].max() == 0


def test_the_spike_guard_tracks_the_reconstruction_term_not_the_adversarial_swing(tmp_path, monkeypatch):
    """After disc_start the generator's loss swings through 0 (the adaptive-weighted hinge term): steps whose total
    loss is 10× its running mean are kept, because the guard follows the reconstruction term; the discriminator's
    bounded hinge loss is not spike-checked at all."""
    trainer = Trainer(ldm_config("train.max_loss_ratio=2.0"), tmp_path)
    losses = trainer.model.losses
    swings = iter([1.0, -1.0, 30.0, -30.0])  # stage 1: steps 0-3, the discriminator from step 2

    def swinging(*arguments):
        result = losses(*arguments)
        result.loss_vae = result.loss_vae - result.loss_vae.detach() + next(swings) * result.loss_vae.detach().abs()
        if result.loss_disc is not None:
            result.loss_disc = result.loss_disc * 40.0 * trainer.progress.step
        return result

    monkeypatch.setattr(trainer.model, "losses", swinging)
    for _ in range(4):
        trainer.train_step(next(trainer.stream).x)
    trainer.close()
    assert trainer.progress.skipped == 0
    assert set(trainer.progress.loss_scale) == {"vae"}
    assert trainer.progress.loss_scale["vae"] > 0  # the running mean of the reconstruction term


def test_evaluate_runs_every_task_on_an_ldm(tmp_path):
    """lsgm.evaluate on an LDM checkpoint: the reconstruction error in place of the NLL, progressive coding through
    the latent chain (distortion of decoded predictions, rate per data dimension), and sample quality."""
    from lsgm import evaluate
    from lsgm.cli import compose

    train(ldm_config("train.eval_every=4"), tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    cfg = compose(evaluate.CONFIG, [f"ckpt={checkpoint}", f"out={tmp_path / 'eval'}", "logger=none", "max_images=12",
                                    "bound.num_steps=12", "bound.progressive_images=3", "quality.num_samples=32",
                                    "sampler=dpm2m", "sampler.options.steps=3"])
    summary = evaluate.main(cfg)
    model = load(checkpoint)
    x = load_dataset("digits", split="test").x[:12]
    assert summary["reconstruction_rmse"] == pytest.approx(model.reconstruction_error(x).mean().item(), rel=1e-5)
    assert "nll_bits_per_dim" not in summary
    assert summary["bound_latent_prior_bits_per_dim"] > 0 and summary["quality_digits_fd"] > 0
    rows = (tmp_path / "eval" / "tables" / "rate_distortion.csv").read_text().splitlines()
    assert len(rows) == 1 + 12


def test_repaint_and_interpolation_run_through_the_ldm_latents():
    from lsgm.apps.inpaint import inpaint
    from lsgm.apps.interpolate import interpolate

    model = tiny_model()
    model.prepare_prior(digits(), None)
    x = load_dataset("digits", split="test").x[:3]
    mask = torch.ones(1, 1, 8, 8)
    mask[..., :, 4:] = 0
    completed = inpaint(model, x, mask, t_T=10, jump_length=2, jump_n_sample=2, seed=0)
    assert torch.equal(completed[..., :4], x[..., :4])  # the known pixels are kept
    assert torch.equal(completed, model.to_data_grid(completed)) and not torch.equal(completed, x)
    with pytest.raises(ValueError, match="a ldm model has none"):
        inpaint(model, x, mask, t_T=10, consistency_steps=5)
    frames = interpolate(model, x[:2], x[1:3], t=0, lambdas=[0.0, 0.5, 1.0], seed=0)
    assert frames.shape == (2, 3, 1, 8, 8)
    reconstructions = model.to_data_grid(model.decode(model.encode(x, mean=True)))
    assert torch.equal(frames[:, 0], reconstructions[:2]) and torch.equal(frames[:, 2], reconstructions[1:3])


def test_a_mask_condition_reaches_the_ldm_by_concatenation_on_its_latent_grid(tmp_path):
    """condition=mask: the known pixels, pooled to the 4×4 latent grid, enter the score network as extra channels;
    it trains through the trainer and samples given (images, mask)."""
    model = train(ldm_config("condition=mask"), tmp_path).model.eval()
    x = load_dataset("digits", split="test").x[:4]
    mask = torch.ones(1, 1, 8, 8)
    mask[..., 4:, :] = 0
    inputs = model.condition_inputs((x, mask))
    assert inputs["cond"].shape == (4, 2, 4, 4)  # [m ⊙ x, m] pooled from 8×8 to the latent grid
    assert torch.allclose(inputs["cond"][:, 1, :2], torch.ones(4, 2, 4)) and inputs["cond"][:, 1, 2:].abs().max() == 0
    images, nfe = model.sample(4, sampler="dpm2m", steps=3, y=(x, mask), guidance=2.0,
                               generator=torch.Generator().manual_seed(0))
    assert images.shape == (4, 1, 8, 8) and nfe == 3
