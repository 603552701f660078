"""Checkpoints that are data, never code: safe reads, a checksum, atomic writes, exact RNG states, shareable exports.

File format `lsgm-checkpoint-v2` (`FORMAT`): the zip archive `torch.save` writes of one dict,

    {"format": "lsgm-checkpoint-v2", "config", "model", "step", ...the trainer's other entries...}

holding only tensors and plain containers (dict, list, tuple, str, int, float, bool, None), so it is read with
`torch.load(weights_only=True)`: a pickle that asks to call or build anything else is refused, never run. The
archive is sealed by a checksum in its zip comment, which zip readers (and `torch.load`) ignore: the end record's
comment length is set to `SEAL_LENGTH` and the file ends in `b"lsgm-sha256:"` followed by the hex sha256 of every
byte before it. `load_checkpoint` verifies the seal before unpickling anything, so a flipped or missing byte anywhere
in the file is reported as corruption.

`lsgm-checkpoint-v1` files (before this format) are unsealed and hold numpy's RNG state as a pickled uint32 array.
`lsgm.load` still reads them, read-only with a `LegacyCheckpointWarning`, allowing exactly the numpy globals such an
array needs (`LEGACY_NUMPY_GLOBALS`); training refuses to resume from one and names the conversion,
`python -m lsgm.checkpoint source=OLD.pt destination=NEW.pt` (`upgrade_checkpoint`).

`save_pretrained` / `from_pretrained` share a model without optimizer or RNG state: a folder of `model.safetensors`
(its weights) and `config.json` (run config, data shape, levels, number of classes, the weights' sha256).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from omegaconf import OmegaConf

FORMAT = "lsgm-checkpoint-v2"
LEGACY_FORMAT = "lsgm-checkpoint-v1"
REQUIRED_KEYS = ("format", "config", "model", "step")
SEAL_PREFIX = b"lsgm-sha256:"
SEAL_LENGTH = len(SEAL_PREFIX) + 64
END_RECORD = b"PK\x05\x06"  # a zip archive's end-of-central-directory record; its last 2 bytes: comment length
END_RECORD_SIZE = 22
PRETRAINED_FORMAT = "lsgm-pretrained-v1"
PRETRAINED_WEIGHTS, PRETRAINED_CONFIG = "model.safetensors", "config.json"
CHUNK = 1 << 20
PLAIN_TYPES = (torch.Tensor, torch.dtype, torch.device, str, bytes, bool, int, float, complex, type(None))


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, unsafe or from an incompatible model, or a save that failed."""


class LegacyCheckpointWarning(UserWarning):
    """A checkpoint of an older format, loaded for reading only."""


def legacy_numpy_globals() -> list:
    """What unpickling a numpy uint32 array needs (the v1 numpy RNG key), and nothing else."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


LEGACY_NUMPY_GLOBALS = legacy_numpy_globals()


# --- writing ------------------------------------------------------------------------------------------------------
class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint that could not be written (disk full, unwritable folder); the previous one is intact."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write `{"format": FORMAT, **state}` (tensors and plain containers) sealed to `path`, atomically: `torch.save`
    to a unique temporary file beside `path`, sealed, fsynced, then `os.replace`d over `path`, so that an interrupted
    save leaves the previous checkpoint intact and two writers never share a file.

    A write that fails (disk full, unwritable folder) removes its temporary file and raises CheckpointWriteError (a
    CheckpointError and an OSError) naming the path, the reason and the space left; `path` is untouched. A state
    holding anything else than tensors and plain containers is refused before writing (`check_plain`).
    """
    check_plain(state)
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        torch.save({"format": FORMAT, **state}, temporary)
        with open(temporary, "r+b") as stream:
            seal(stream)
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        _remove(temporary)
        if isinstance(error, OSError | RuntimeError) and not isinstance(error, CheckpointError):
            raise CheckpointWriteError(_write_failure(path, error)) from error
        raise


def check_plain(value, where: str = "state") -> None:
    """TypeError naming the first entry of `value` that `torch.load(weights_only=True)` would refuse to read back:
    anything but tensors, dtypes, devices, str, bytes, numbers, None, and dicts, lists, tuples and sets of them."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_plain(key, f"a key of {where}")
            check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]")
    elif not isinstance(value, PLAIN_TYPES):
        raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}; a checkpoint holds "
                        "tensors and plain containers only (it is read with torch.load(weights_only=True))")


def seal(stream) -> None:
    """Seal the `torch.save` archive open in `stream` (read-write, binary; module docstring): set its zip comment
    length to `SEAL_LENGTH`, then append `SEAL_PREFIX` and the hex sha256 of every byte before it."""
    stream.seek(-END_RECORD_SIZE, os.SEEK_END)
    end = stream.read(END_RECORD_SIZE)
    if end[:4] != END_RECORD or end[-2:] != b"\0\0":
        raise CheckpointError(f"torch.save (torch {torch.__version__}) wrote an archive without a bare zip end "
                              "record; lsgm cannot seal it")
    stream.seek(-2, os.SEEK_END)
    stream.write(SEAL_LENGTH.to_bytes(2, "little"))
    stream.seek(0)
    digest = _sha256(stream)
    stream.write(SEAL_PREFIX + digest.encode("ascii"))
    stream.flush()


def _write_failure(path: Path, error: BaseException) -> str:
    """What went wrong in a save, for a person: the system's reason, and the free space (torch's own writer reports
    a full disk only as a failed write, so a disk with 0 bytes free is named as full)."""
    if isinstance(error, OSError):
        reason = error.strerror or _first_line(error)
    else:
        reason = f"torch.save failed ({_first_line(error)})"
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free == 0 and not isinstance(error, OSError):
        reason = f"{os.strerror(errno.ENOSPC)}: {reason}"
    space = "" if free is None else f"; {free} bytes free there"
    return (f"could not write checkpoint {path}: {reason}{space}; the previous checkpoint there (if any) is intact; "
            "free disk space or fix the folder's permissions, then save again")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _remove(temporary: str | None) -> None:
    if temporary is not None:
        Path(temporary).unlink(missing_ok=True)


# --- reading ------------------------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path, map_location="cpu", *, legacy: bool = False) -> dict:
    """The state of a checkpoint written by `save_checkpoint`, read with `torch.load(weights_only=True)` after its
    seal is verified; or CheckpointError saying what is wrong (missing, corrupt, unsafe, foreign, older format).

    `legacy=True` also reads an `lsgm-checkpoint-v1` file (read-only use, e.g. `lsgm.load`), with a
    LegacyCheckpointWarning; its RNG states are returned in this format's form (`rng_state`).
    """
    path = _existing(path)
    _check_device(map_location)
    sealed = _verify_seal(path)
    state = _unpickle(path, map_location, allow_numpy=not sealed)
    found = state.get("format") if isinstance(state, dict) else None
    if found == LEGACY_FORMAT:
        return _legacy_state(path, state, legacy)
    if found != FORMAT:
        raise CheckpointError(f"{path} is not an lsgm checkpoint (expected format {FORMAT!r}, found "
                              f"{found!r}); pass a .pt file written by lsgm's trainer")
    if not sealed:
        raise CheckpointError(f"{path} is corrupt: it lacks the sha256 seal every {FORMAT} file ends with "
                              "(truncated or altered); use another checkpoint, e.g. checkpoints/best.pt or last.pt")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; it was not written by this version of lsgm")
    return state


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        hint = f" (files there: {sorted(p.name for p in path.parent.iterdir())})" if path.parent.is_dir() else ""
        raise CheckpointError(f"no checkpoint at {path}{hint}; pass the path of a .pt file written by lsgm's trainer")
    return path


def _check_device(map_location) -> None:
    """A ValueError naming the fix when `map_location` is a CUDA device this machine does not have."""
    if isinstance(map_location, str | torch.device) and torch.device(map_location).type == "cuda" \
            and not torch.cuda.is_available():
        raise ValueError(f"device {str(map_location)!r} is not available here (torch.cuda.is_available() is False); "
                         "pass device='cpu'")


def _verify_seal(path: Path) -> bool:
    """True when the file ends in a seal matching its bytes, False when it ends in none (an older or foreign file);
    CheckpointError when the seal does not match (a flipped or lost byte)."""
    with open(path, "rb") as stream:
        size = stream.seek(0, os.SEEK_END)
        if size < SEAL_LENGTH + END_RECORD_SIZE:
            return False
        stream.seek(size - SEAL_LENGTH)
        trailer = stream.read(SEAL_LENGTH)
        if not trailer.startswith(SEAL_PREFIX):
            return False
        stream.seek(0)
        digest = _sha256(stream, size - SEAL_LENGTH)
    if digest.encode("ascii") != trailer[len(SEAL_PREFIX):]:
        raise CheckpointError(f"{path} is corrupt: its bytes do not match the sha256 checksum it was written with "
                              "(a flipped byte, a partial copy or a disk error); use another checkpoint, e.g. "
                              "checkpoints/best.pt or last.pt of the run, or copy the file again")
    return True


def _unpickle(path: Path, map_location, allow_numpy: bool):
    """torch.load(weights_only=True); for an unsealed (possibly v1) file, numpy uint32 arrays are allowed too."""
    allowed = LEGACY_NUMPY_GLOBALS if allow_numpy else []
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = _unsafe_globals(path, allowed)
        if unsafe:
            raise CheckpointError(f"{path} is unsafe: its pickle asks to call or build {unsafe}, which lsgm refuses "
                                  "(checkpoints hold tensors and plain containers only, and loading one never "
                                  "runs code); use a checkpoint written by lsgm") from None
        raise _corrupt(path, error) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as error:
        raise _corrupt(path, error) from None


def _unsafe_globals(path: Path, allowed: list) -> list[str]:
    """The globals a pickle names beyond torch's weights-only set and `allowed`, read without running it."""
    names = {f"{item.__module__}.{item.__qualname__}" for item in allowed}
    try:
        return [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(path) if name not in names]
    except Exception:  # an unreadable archive: reported as corrupt by the caller
        return []


def _corrupt(path: Path, error: BaseException) -> CheckpointError:
    return CheckpointError(f"{path} is corrupt or not a torch checkpoint ({type(error).__name__}: "
                           f"{_first_line(error)}); use another checkpoint, e.g. checkpoints/best.pt or last.pt "
                           "of the run")


def _legacy_state(path: Path, state: dict, legacy: bool) -> dict:
    """A v1 checkpoint's state with its RNG states in this format's form, for read-only use; CheckpointError with
    the conversion when the caller does not accept v1 (`legacy=False`, e.g. resuming training)."""
    convert = f"python -m lsgm.checkpoint source={path} destination=NEW.pt"
    if not legacy:
        raise CheckpointError(f"{path} is an {LEGACY_FORMAT} checkpoint (pickled numpy state, no checksum); lsgm.load "
                              f"reads it read-only, but to resume training convert it first: {convert}")
    warnings.warn(f"{path} is an {LEGACY_FORMAT} checkpoint, loaded for reading only (numpy arrays allowed, no "
                  f"checksum); convert it to {FORMAT} with: {convert}", LegacyCheckpointWarning, stacklevel=3)
    if state.get("rng") is not None:
        old = state["rng"]
        state["rng"] = {**old, "numpy": encode_numpy_state(old["numpy"]),
                        "python": encode_python_state(old["python"])}
    return {**state, "format": FORMAT}


def upgrade_checkpoint(source: str | Path, destination: str | Path) -> None:
    """Write a v1 (or v2) checkpoint at `source` as an `lsgm-checkpoint-v2` file at `destination`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LegacyCheckpointWarning)
        state = load_checkpoint(source, legacy=True)
    save_checkpoint(destination, {key: value for key, value in state.items() if key != "format"})


def load_model_state(module: torch.nn.Module, state_dict: dict, path: str | Path = "checkpoint") -> None:
    """load_state_dict with one clear error when the checkpoint was made for a differently configured model."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as error:
        first_lines = "\n".join(str(error).splitlines()[:4])
        raise CheckpointError(f"{path} does not fit this model's configuration (resume with the run's own "
                              f"config.yaml, or start a new run folder):\n{first_lines}") from None


# --- random generators ----------------------------------------------------------------------------------------------
def encode_numpy_state(state: tuple) -> dict:
    """numpy's legacy `get_state()` tuple (MT19937 key as a uint32 array, position, has_gauss, cached_gaussian) as
    plain values and an int64 tensor."""
    name, key, position, has_gauss, cached_gaussian = state
    return {"bit_generator": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "position": int(position), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def decode_numpy_state(state: dict) -> tuple:
    """The `np.random.set_state` tuple of `encode_numpy_state`'s dict."""
    key = state["key"].cpu().numpy().astype(np.uint32)
    return state["bit_generator"], key, state["position"], state["has_gauss"], state["cached_gaussian"]


def encode_python_state(state: tuple) -> dict:
    """`random.getstate()` (version, 625 ints of the Mersenne Twister, gauss_next) as plain values and a tensor."""
    version, internal, gauss_next = state
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next}


def decode_python_state(state: dict) -> tuple:
    """The `random.setstate` tuple of `encode_python_state`'s dict."""
    return state["version"], tuple(state["internal"].tolist()), state["gauss_next"]


def rng_state() -> dict:
    """The state of every random generator a training step touches, as tensors and plain values: `torch` (CPU byte
    tensor), `cuda` (one byte tensor per device, when CUDA is available), `numpy` (`encode_numpy_state`) and `python`
    (`encode_python_state`). `set_rng_state` restores it exactly."""
    state = {"torch": torch.get_rng_state(), "numpy": encode_numpy_state(np.random.get_state()),
             "python": encode_python_state(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the generators of an `rng_state()` (its tensors may sit on any device)."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(decode_numpy_state(state["numpy"]))
    random.setstate(decode_python_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([generator.cpu() for generator in state["cuda"]])


# --- sharing ----------------------------------------------------------------------------------------------------------
def save_pretrained(model: torch.nn.Module, directory: str | Path) -> Path:
    """Export a model of `lsgm.load` (its EMA weights) to `directory`: `model.safetensors` holds its state dict,
    `config.json` its run config, data shape, levels, number of classes and the weights' sha256. Returns the folder.
    `from_pretrained(directory)` (or `lsgm.load(directory)`) rebuilds the same model."""
    if getattr(model, "config", None) is None:
        raise ValueError("save_pretrained needs the run config on the model (model.config): use a model from lsgm.load")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    safetensors.torch.save_file(weights, directory / PRETRAINED_WEIGHTS)
    condition = getattr(model, "condition", None)
    config = {"format": PRETRAINED_FORMAT, "config": OmegaConf.to_container(model.config, resolve=True),
              "data_shape": list(model.data_shape), "levels": model.levels,
              "num_classes": getattr(condition, "num_classes", None),
              "weights_sha256": _file_sha256(directory / PRETRAINED_WEIGHTS)}
    (directory / PRETRAINED_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def read_pretrained(directory: str | Path) -> dict:
    """A `save_pretrained` folder as a checkpoint-like state: config, data_shape, levels, num_classes and `model`
    (the weights, already the EMA ones), after checking the weights' sha256; or CheckpointError."""
    directory = Path(directory)
    config_path, weights_path = directory / PRETRAINED_CONFIG, directory / PRETRAINED_WEIGHTS
    if not (config_path.is_file() and weights_path.is_file()):
        raise CheckpointError(f"{directory} is not an lsgm pretrained folder (it needs {PRETRAINED_CONFIG} and "
                              f"{PRETRAINED_WEIGHTS}, as save_pretrained writes them)")
    try:
        record = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path} is corrupt ({error})") from None
    keys = ("format", "config", "data_shape", "levels", "num_classes", "weights_sha256")
    if not isinstance(record, dict) or record.get("format") != PRETRAINED_FORMAT or not set(keys) <= set(record):
        raise CheckpointError(f"{config_path} is not an lsgm pretrained config (expected format "
                              f"{PRETRAINED_FORMAT!r} with {list(keys)})")
    if _file_sha256(weights_path) != record.get("weights_sha256"):
        raise CheckpointError(f"{weights_path} is corrupt: its sha256 differs from the one in {PRETRAINED_CONFIG}; "
                              "copy the folder again")
    return {"config": record["config"], "data_shape": tuple(record["data_shape"]), "levels": record["levels"],
            "num_classes": record["num_classes"], "model": safetensors.torch.load_file(weights_path), "ema": None}


def from_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of a `save_pretrained` folder, in eval mode (the same as `lsgm.load(directory)`)."""
    from .build import load

    return load(directory, device=device)


def _sha256(stream, length: int | None = None) -> str:
    """The hex sha256 of the next `length` bytes of `stream` (None: up to its end)."""
    digest = hashlib.sha256()
    while length is None or length > 0:
        chunk = stream.read(CHUNK if length is None else min(CHUNK, length))
        if not chunk:
            break
        digest.update(chunk)
        length = None if length is None else length - len(chunk)
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as stream:
        return _sha256(stream)


if __name__ == "__main__":
    from lsgm.checkpoint import upgrade_checkpoint as upgrade
    from lsgm.cli import run

    run(lambda cfg: upgrade(cfg.source, cfg.destination), {"source": "???", "destination": "???"},
        "lsgm.checkpoint")
