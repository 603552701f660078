"""Conditioning: cross-attention and concatenation see the condition; guidance 0 is the unconditional model."""

import pytest
import torch
from torch import nn

import sde
from lsgm.build import load
from lsgm.cli import compose
from lsgm.conditioning import ClassCondition, MaskCondition, random_masks
from lsgm.models import PixelSGM
from lsgm.sample import CONFIG, main
from lsgm.score_net import ResBlock, ScoreNet, timestep_embedding
from lsgm.train import Trainer

from .conftest import tiny_config


def randomised(module: nn.Module) -> nn.Module:
    """Every parameter redrawn (the U-Net's zero-initialised output layers would hide any input); eval mode."""
    torch.manual_seed(0)
    for parameter in module.parameters():
        nn.init.normal_(parameter, std=0.2)
    return module.eval()


def test_cross_attention_sees_the_context():
    net = randomised(ScoreNet(2, 4, channels=8, num_res_blocks=1, attn_resolutions=(4,), context_dim=6))
    x, t = torch.randn(3, 2, 4, 4), torch.rand(3)
    context = torch.randn(3, 1, 6)
    same = net(x, t, context=context)
    other = net(x, t, context=context + 1.0)
    assert torch.equal(same, net(x, t, context=context))
    assert (same - other).abs().max() > 1e-3


def test_context_in_time_adds_the_mean_token_to_the_time_embedding_of_every_block():
    net = randomised(ScoreNet(2, 4, channels=8, num_res_blocks=1, attn_resolutions=(4,), context_dim=6,
                              context_in_time=True))
    x, t, context = torch.randn(3, 2, 4, 4), torch.rand(3), torch.randn(3, 2, 6)
    seen = []
    hooks = [block.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[1].clone()))
             for block in net.modules() if isinstance(block, ResBlock)]
    net(x, t, context=context)
    for hook in hooks:
        hook.remove()
    expected = net.temb(timestep_embedding(t, 8, net.time_scale)) + context.mean(1) @ net.context_temb.weight.T \
        + net.context_temb.bias
    assert len(seen) > 4 and all(torch.allclose(temb, expected, atol=1e-6) for temb in seen)
    with pytest.raises(ValueError, match="give context"):
        net(x, t)
    with pytest.raises(ValueError, match="needs context tokens"):
        ScoreNet(2, 4, channels=8, context_in_time=True)


def test_concatenation_sees_the_conditioning_tensor():
    net = randomised(ScoreNet(2, 4, channels=8, num_res_blocks=1, attn_resolutions=(), cond_channels=3))
    x, t = torch.randn(3, 2, 4, 4), torch.rand(3)
    cond = torch.randn(3, 3, 4, 4)
    assert (net(x, t, cond=cond) - net(x, t, cond=cond.flip(0))).abs().max() > 1e-3


def class_model():
    condition = ClassCondition(num_classes=10, context_dim=6, drop_rate=0.5)
    net = ScoreNet(2, 4, channels=8, num_res_blocks=1, attn_resolutions=(4,), context_dim=6)
    model = PixelSGM(randomised(net), sde.VPSDE(), data_shape=(2, 4, 4), levels=None, mixed=False,
                     condition=randomised(condition))
    return model, condition


def test_guidance_zero_is_the_unconditional_model_and_one_the_conditional():
    model, condition = class_model()
    z, t = torch.randn(4, 2, 4, 4), torch.rand(4)
    y = torch.tensor([0, 3, 3, 9])
    unconditional = model.eps(z, t, **condition.inputs(torch.full((4,), -1)))
    conditional = model.eps(z, t, **condition.inputs(y))
    assert torch.allclose(model.eps_fn(y, guidance=0.0)(z, t), unconditional)
    assert torch.allclose(model.eps_fn()(z, t), unconditional)
    assert torch.allclose(model.eps_fn(y, guidance=1.0)(z, t), conditional)
    assert torch.allclose(model.eps_fn(y, guidance=2.5)(z, t), unconditional + 2.5 * (conditional - unconditional),
                          atol=1e-5)
    assert (conditional - unconditional).abs().max() > 1e-3


def test_condition_dropout_rates():
    condition = ClassCondition(num_classes=10, drop_rate=0.3)
    torch.manual_seed(0)
    y = torch.randint(0, 10, (20000,))
    dropped = condition.drop(y)
    rate = (dropped == -1).float().mean().item()
    assert abs(rate - 0.3) < 4 * (0.3 * 0.7 / 20000) ** 0.5
    assert torch.equal(dropped[dropped != -1], y[dropped != -1])
    with pytest.raises(ValueError, match="0..9"):
        condition.inputs(torch.tensor([10]))


def test_mask_condition_pools_known_pixels_to_the_latent_grid():
    condition = MaskCondition(data_channels=1, latent_size=4)
    x = torch.arange(64.0).reshape(1, 1, 8, 8) / 64
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    cond = condition.inputs((x, mask))["cond"]
    assert cond.shape == (1, 2, 4, 4)
    assert torch.allclose(cond[0, 1], torch.tensor([1.0, 1.0, 0.0, 0.0])[:, None].expand(4, 4))
    assert torch.allclose(cond[0, 0, 0, 0], (x[0, 0, :2, :2]).mean())
    masks = random_masks(500, (8, 8), generator=torch.Generator().manual_seed(0))
    unknown = 1 - masks.mean((1, 2, 3))
    assert unknown.min() > 0 and unknown.max() <= 0.75**2 + 1e-6


def test_class_conditional_training_and_sampling_command(tmp_path, capsys):
    trainer = Trainer(tiny_config("condition=class", "condition.context_dim=8"), tmp_path)
    trainer.fit()
    trainer.close()
    checkpoint = tmp_path / "checkpoints" / "last.pt"
    model = load(checkpoint)
    assert model.condition is not None and model.condition.kind == "class"
    out = tmp_path / "threes.npz"
    main(compose(CONFIG, [f"ckpt={checkpoint}", "num_samples=6", "sampler=heun", "sampler.options.steps=3",
                          f"out={out}", "condition.class=3", "guidance=2.0"]))
    import numpy as np

    samples = np.load(out)["samples"]
    assert samples.shape == (6, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 16
    assert "network evaluations" in capsys.readouterr().out


def test_the_class_preset_trains_its_score_model_alone_on_the_frozen_vae(tmp_path):
    """experiment=digits_class (README, "Conditioning through the latents"): stage 1 trains the VAE alone; after it
    the VAE does not move while the score model, with the label in its time embedding, learns."""
    trainer = Trainer(tiny_config("experiment=digits_class"), tmp_path)
    try:
        assert trainer.train_cfg.mode == "disjoint" and trainer.model.score_net.context_temb is not None
        stage1 = trainer.train_cfg.stage1_steps
        for step in range(stage1 + 2):
            vae, score = [p.detach().clone() for p in trainer.vae_parameters], \
                [p.detach().clone() for p in trainer.score_parameters]
            batch = next(trainer.stream)
            record = trainer.train_step(batch.x, batch.y)
            vae_moved = any(not torch.equal(a, b) for a, b in zip(vae, trainer.vae_parameters))
            score_moved = any(not torch.equal(a, b) for a, b in zip(score, trainer.score_parameters))
            assert (record["phase"], vae_moved, score_moved) == (("vae", True, False) if step < stage1
                                                                 else ("disjoint", False, True)), step
    finally:
        trainer.close()
