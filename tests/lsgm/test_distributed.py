"""Data parallelism on CPU with gloo, 2 processes: every rank holds the same model at every step."""

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


def train_rank(rank: int, world_size: int, port: int, run_dir: str, out: str) -> None:
    """One torchrun-like process: the tiny digits LSGM for STEPS steps (stage 1 then joint); after building and
    after every step, its full state (weights, buffers, EMA) and the batch it trained on go to out/rank<r>.pt."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from lsgm.train import Trainer

    trainer = Trainer(tiny_config("device=cpu", f"train.steps={STEPS}", "train.stage1_steps=2"), run_dir)
    snapshots, batches = [], []

    def snapshot():
        return {**{k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
                **{f"ema.{k}": v.clone() for k, v in trainer.ema.shadow.items()}}

    snapshots.append(snapshot())
    for _ in range(STEPS):
        batch = next(trainer.stream)
        batches.append(batch.x.clone())
        trainer.train_step(batch.x)
        snapshots.append(snapshot())
    trainer.close()
    torch.save({"snapshots": snapshots, "batches": batches}, os.path.join(out, f"rank{rank}.pt"))


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
