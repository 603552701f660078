"""Checkpoints that resume exactly: atomic writes, RNG states, and clear errors for bad files."""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

FORMAT = "lsgm-checkpoint-v1"
REQUIRED_KEYS = ("format", "config", "model", "step")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or from an incompatible model."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write `state` (tagged with the format) to a unique temporary file beside `path` and `os.replace` it over
    `path`, so that an interrupted save leaves the previous checkpoint intact (and two writers never share a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save({"format": FORMAT, **state}, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`, or raise CheckpointError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        hint = f" (files there: {sorted(p.name for p in path.parent.iterdir())})" if path.parent.is_dir() else ""
        raise CheckpointError(f"no checkpoint at {path}{hint}; pass the path of a .pt file written by lsgm's trainer")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"{path} is corrupt or not a torch checkpoint ({type(error).__name__}: {error}); "
                              "use another checkpoint, e.g. checkpoints/best.pt or last.pt of the run") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an lsgm checkpoint (expected format {FORMAT!r})")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; it was not written by this version of lsgm")
    return state


def load_model_state(module: torch.nn.Module, state_dict: dict, path: str | Path = "checkpoint") -> None:
    """load_state_dict with one clear error when the checkpoint was made for a differently configured model."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as error:
        first_lines = "\n".join(str(error).splitlines()[:4])
        raise CheckpointError(f"{path} does not fit this model's configuration (resume with the run's own "
                              f"config.yaml, or start a new run folder):\n{first_lines}") from None


def rng_state() -> dict:
    """The state of every random generator a training step touches (torch CPU/CUDA, numpy, random)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
