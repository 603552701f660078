"""Progress bars: one per sampling run counting the sampler's steps (through its callback, samples unchanged), one
over the test NLL's images, quiet off a terminal and silenced by progress=false."""

import pytest
import torch

from lsgm import evaluate
from lsgm.build import load, load_splits
from lsgm.cli import UsageError, compose
from lsgm.progress import progress_bar
from lsgm.sample import CONFIG, check_arguments, draw


def test_off_a_terminal_the_bar_redraws_at_most_every_30_seconds(capsys):
    with progress_bar(total=3) as bar:
        assert bar.mininterval == 30.0  # pytest's captured stderr is not a terminal
    capsys.readouterr()
    with progress_bar(False, total=3) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""


def test_the_sampling_bar_counts_every_step_of_every_batch_and_leaves_the_samples_alone(tiny_checkpoint, capsys):
    model = load(tiny_checkpoint)
    steps_per_batch = []
    model.sample(2, sampler="heun", generator=torch.Generator().manual_seed(0), callback=steps_per_batch.append,
                 steps=3)
    total = 3 * len(steps_per_batch)  # 5 samples in batches of 2
    capsys.readouterr()
    with_bar, _ = draw(model, 5, "heun", {"steps": 3}, batch_size=2, seed=1)
    err = capsys.readouterr().err
    assert "sampling (heun, 3 batches)" in err and f" {total}/{total} " in err
    without_bar, _ = draw(model, 5, "heun", {"steps": 3}, batch_size=2, seed=1, progress=False)
    assert capsys.readouterr().err == ""
    assert torch.equal(with_bar, without_bar)


def test_the_nll_bar_counts_images(tiny_checkpoint, capsys):
    model = load(tiny_checkpoint)
    x = load_splits(model.config.data)["test"].x[:6]
    with_bar = evaluate.test_nll(model, x, batch_size=4, rtol=1e-3, atol=1e-3)
    err = capsys.readouterr().err
    assert "test NLL" in err and " 6/6 " in err
    without_bar = evaluate.test_nll(model, x, batch_size=4, progress=False, rtol=1e-3, atol=1e-3)
    assert capsys.readouterr().err == ""
    assert without_bar.nats.shape == with_bar.nats.shape == (6,)


def test_progress_must_be_true_or_false():
    cfg = compose(CONFIG, ["ckpt=x.pt", "progress=sometimes"])
    with pytest.raises(UsageError, match="progress must be true or false"):
        check_arguments(cfg)
