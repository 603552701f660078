"""One process or many (torchrun): the device, the rank, gradient averaging across ranks, and the noise streams of
micro-batches.

Under torchrun (WORLD_SIZE > 1) the process group uses NCCL on CUDA and Gloo on the CPU. Gradients
are averaged with one flattened all-reduce per parameter group after the backward passes — the
same arithmetic as DistributedDataParallel, without its one-backward-per-forward restriction (the
joint objective runs two backward passes, one per optimizer).

A step of W processes × A micro-batches (`train.accumulate`) is the step of W·A processes: micro-batch i of rank r
takes the examples and draws the noise that rank r + W·i of W·A would (`NoiseStreams`), so that the arithmetic is
the same up to the order of the sums (tests/lsgm/test_distributed.py: 2 processes against 1 process × 2).
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Context:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` → CUDA when available, else CPU; `cuda` → this process's GPU under torchrun."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device=cpu or device=auto")
    if name == "cuda":
        return torch.device("cuda", local_rank)
    if name != "cpu" and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return torch.device(name)


def setup(device: str = "auto") -> Context:
    """Join the process group when launched by torchrun; otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Context(rank, world_size, resolved)


def average_gradients(parameters, world_size: int) -> None:
    """p.grad ← mean over ranks of p.grad, for every parameter with a gradient (one all-reduce)."""
    if world_size <= 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, context: Context) -> None:
    """Every parameter and buffer of `module` replaced by rank 0's (no-op in one process)."""
    if context.world_size <= 1:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def mean_over_ranks(values: torch.Tensor, context: Context) -> torch.Tensor:
    """The mean of `values` over the ranks (one all-reduce; the values themselves in one process)."""
    if context.world_size <= 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / context.world_size


class NoiseStreams:
    """The random streams of a step's A micro-batches on this rank: micro-batch i draws from the stream rank
    r + W·i of a world of W·A processes would draw from (seeded seed + r + W·i, as `Trainer` seeds a rank), on the
    CPU's generator and the device's. With A = 1 the global generators serve (nothing is swapped).

    `drawing(i)` swaps stream i into the global generators for the block (a forward pass) and keeps where it ended;
    `state_dict()` holds every stream's state for a checkpoint, so a resumed run continues them exactly."""

    def __init__(self, seed: int, micro_batches: int, context: Context):
        self.device = context.device if context.device.type == "cuda" else None
        self.states = []
        if micro_batches > 1:
            with torch.random.fork_rng(devices=[self.device] if self.device is not None else []):
                for index in range(micro_batches):
                    torch.manual_seed(seed + context.rank + context.world_size * index)
                    self.states.append(self._current())

    def _current(self) -> list[torch.Tensor]:
        return [torch.get_rng_state(), *([torch.cuda.get_rng_state(self.device)] if self.device is not None else [])]

    def _set(self, state: list[torch.Tensor]) -> None:
        torch.set_rng_state(state[0].cpu())
        if self.device is not None:
            torch.cuda.set_rng_state(state[1].cpu(), self.device)

    def drawing(self, index: int):
        return self._swapped(index) if self.states else nullcontext()

    @contextmanager
    def _swapped(self, index: int):
        outside = self._current()
        self._set(self.states[index])
        try:
            yield
        finally:
            self.states[index] = self._current()
            self._set(outside)

    def state_dict(self) -> list[list[torch.Tensor]]:
        return [list(state) for state in self.states]

    def load_state_dict(self, states: list) -> None:
        if len(states) != len(self.states):
            raise ValueError(f"{len(states)} noise streams saved, {len(self.states)} micro-batches now")
        self.states = [list(state) for state in states]


def any_rank(flag: bool, context: Context) -> bool:
    """True on every rank when `flag` is true on any (one all-reduce; no communication in one process)."""
    if context.world_size <= 1:
        return flag
    value = torch.tensor([float(flag)], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(context: Context) -> None:
    if context.world_size > 1:
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
