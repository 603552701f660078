"""One process or many (torchrun): the device, the rank, and gradient averaging across ranks.

Under torchrun (WORLD_SIZE > 1) the process group uses NCCL on CUDA and Gloo on the CPU. Gradients
are averaged with one flattened all-reduce per parameter group after the backward passes — the
same arithmetic as DistributedDataParallel, without its one-backward-per-forward restriction (the
joint objective runs two backward passes, one per optimizer).
"""

from __future__ import annotations

import os
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
