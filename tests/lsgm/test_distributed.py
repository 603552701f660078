"""Data parallelism on CPU with gloo, 2 processes: every rank holds the same model at every step, the model one process
with two micro-batches a step (train.accumulate=2) holds."""

import os
import socket

import torch
import torch.multiprocessing as mp

from .conftest import tiny_config

STEPS = 4


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_rank(rank: int, world_size: int, port: int, run_dir: str, out: str, overrides: tuple = ()) -> None:
    """One torchrun-like process: the tiny digits LSGM for STEPS steps (stage 1 then joint); after building and
    after every step, its full state (weights, buffers, EMA) and the batch it trained on go to out/rank<r>.pt."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from lsgm.train import Trainer

    trainer = Trainer(tiny_config("device=cpu", f"train.steps={STEPS}", "train.stage1_steps=2", *overrides), run_dir)
    snapshots, batches = [], []

    def snapshot():
        return {**{k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
                **{f"ema.{k}": v.clone() for k, v in trainer.ema.shadow.items()}}

    snapshots.append(snapshot())
    grad_norms = []
    for _ in range(STEPS):
        batch = next(trainer.stream)
        batches.append(batch.x.clone())
        numbers = trainer.train_step(batch.x)
        grad_norms.append({name: float(numbers[name]) for name in ("grad_norm_vae", "grad_norm_score")})
        snapshots.append(snapshot())
    trainer.close()
    torch.save({"snapshots": snapshots, "batches": batches, "grad_norms": grad_norms},
               os.path.join(out, f"rank{rank}.pt"))


def test_two_gloo_processes_hold_identical_models_at_every_step_on_disjoint_data(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(train_rank, args=(2, free_port(), str(tmp_path / "run"), str(out)), nprocs=2, join=True)
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    for step, (a, b) in enumerate(zip(ranks[0]["snapshots"], ranks[1]["snapshots"])):
        for name in a:
            assert torch.equal(a[name], b[name]), (step, name)
    first, last = ranks[0]["snapshots"][0], ranks[0]["snapshots"][-1]
    assert any(not torch.equal(first[name], last[name]) for name in first)  # and they did train
    for x0, x1 in zip(ranks[0]["batches"], ranks[1]["batches"]):
        assert x0.shape[0] == 8 and not torch.equal(x0, x1)  # batch 16 split in two shards of 8


def test_one_process_with_two_micro_batches_trains_the_model_two_processes_train(tmp_path):
    """N steps of 2 processes × batch 8 against N steps of 1 process × batch 16 in two micro-batches: the same
    examples (micro-batch i = rank i's shard) and the same noise (micro-batch i draws rank i's stream), so the
    averaged gradients agree up to float32 rounding (measured: ~1e-7 of their norm; checked through the step's
    gradient norms, to 1e-5) and so do the weights: per part (VAE, score network, EMA), the difference's norm is below
    1e-4 of the norm of the step's update at the part's first update. After it, Adam's and Adamax's normalised
    updates turn the rounding of gradients that are ~0 into updates of full size (the score network's output layer
    starts at zero, so its other layers' gradients start near 0; the VAE's weights that barely matter yet, once its
    Adamax has no weight decay to give them a gradient, as in the default preset since its rate went to 3e-2: 3e-4 of
    the update at step 1, against ≤ 3e-6 with weight decay), and the score network's difference grows to ~1e-2 of its
    update by step 4: bounded here by 0.1, which another shard or noise stream (a different gradient, not a rounded
    one) exceeds."""
    out_two, out_one = tmp_path / "two", tmp_path / "one"
    out_two.mkdir(), out_one.mkdir()
    mp.spawn(train_rank, args=(2, free_port(), str(tmp_path / "run2"), str(out_two)), nprocs=2, join=True)
    mp.spawn(train_rank, args=(1, free_port(), str(tmp_path / "run1"), str(out_one), ("train.accumulate=2",)),
             nprocs=1, join=True)
    ranks = [torch.load(out_two / f"rank{r}.pt") for r in range(2)]
    single = torch.load(out_one / "rank0.pt")
    for step, x in enumerate(single["batches"]):
        assert x.shape[0] == 16
        assert torch.equal(x[0::2], ranks[0]["batches"][step]) and torch.equal(x[1::2], ranks[1]["batches"][step])
        for name, value in single["grad_norms"][step].items():
            assert abs(value - ranks[0]["grad_norms"][step][name]) <= 1e-5 * value, (step, name)
    snapshots = list(zip(single["snapshots"], ranks[0]["snapshots"]))
    first_update = {}
    for step, ((one, two), (_, before)) in enumerate(zip(snapshots[1:], snapshots[:-1])):
        for part in ("vae.", "score_net.", "ema."):
            names = [name for name, value in one.items() if name.startswith(part) and value.is_floating_point()]
            difference = torch.cat([(one[name] - two[name]).flatten() for name in names]).norm()
            update = torch.cat([(two[name] - before[name]).flatten() for name in names]).norm()
            if update > 0:
                first_update.setdefault(part, step)
            tolerance = 1e-4 if first_update.get(part, step) == step else 0.1
            assert difference <= tolerance * update, (step, part, difference.item(), update.item())
        for name, value in one.items():
            if not value.is_floating_point():
                assert torch.equal(value, two[name]), (step, name)
    assert first_update == {"vae.": 0, "score_net.": 0, "ema.": 0}
