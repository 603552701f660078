"""Checkpoints are data, never code: weights-only reads, the sha256 seal, exact RNG states, safe failed saves, v1
files read-only, and the safetensors export."""

import errno
import json
import os
import random
import subprocess
import sys
from collections import namedtuple

import numpy as np
import pytest
import torch

import lsgm.checkpoint as checkpoint
from lsgm.build import load
from lsgm.checkpoint import (
    FORMAT,
    SEAL_PREFIX,
    CheckpointError,
    CheckpointWriteError,
    LegacyCheckpointWarning,
    from_pretrained,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_pretrained,
    seal,
    set_rng_state,
    upgrade_checkpoint,
)
from lsgm.train import Trainer

from .conftest import tiny_config

UNSAFE = "is unsafe: its pickle asks to call or build"
SMALL_STATE = {"config": {"seed": 0, "name": "tiny"}, "model": {"weight": torch.arange(6.0)}, "step": 3}


class Payload:
    """An object whose unpickling creates `marker`: what a hostile checkpoint would do with os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def trainer_state(tmp_path_factory):
    """The state a tiny untrained Trainer checkpoints (built once for this module)."""
    trainer = Trainer(tiny_config(), tmp_path_factory.mktemp("run"))
    state = trainer.state()
    trainer.close()
    return state


def write_sealed(path, state):
    """A hostile v2 file: save_checkpoint refuses such a state, but a checksum is no signature, anyone can seal."""
    torch.save({"format": FORMAT, **state}, path)
    with open(path, "r+b") as stream:
        seal(stream)


def write_v1(path, state):
    """A checkpoint as lsgm wrote it before v2: unsealed, numpy's RNG state pickled as an array."""
    old_rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.save({**state, "format": "lsgm-checkpoint-v1", "rng": old_rng}, path)
    return old_rng


def draws():
    return (torch.rand(3), torch.randn(2), np.random.standard_normal(3), np.random.randint(0, 1 << 30, 3),
            random.random(), random.gauss(0, 1))


def assert_same_draws(first, second):
    for a, b in zip(first, second):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else np.array_equal(a, b)


def plain_types(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(key, str) and plain_types(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return all(plain_types(item) for item in value)
    return isinstance(value, torch.Tensor | str | int | float | bool | type(None))


def test_rng_states_are_plain_and_round_trip_exactly_through_a_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal(1), random.gauss(0, 1)  # leave a cached Gaussian in numpy and in random
    state = rng_state()
    assert plain_types(state) and state["numpy"]["has_gauss"] == 1 and state["python"]["gauss_next"] is not None
    save_checkpoint(tmp_path / "last.pt", {**SMALL_STATE, "rng": state})
    expected = draws()
    draws()
    set_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"])
    assert_same_draws(draws(), expected)


def test_a_trainer_checkpoint_is_plain_data_that_torch_reads_weights_only(tmp_path, trainer_state):
    save_checkpoint(tmp_path / "last.pt", trainer_state)
    raw = (tmp_path / "last.pt").read_bytes()
    assert raw[-76:-64] == SEAL_PREFIX and all(chr(c) in "0123456789abcdef" for c in raw[-64:])
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["format"] == FORMAT and plain_types(state)
    assert torch.equal(state["model"]["active"], trainer_state["model"]["active"])


def test_every_flipped_byte_and_a_truncation_are_reported_as_corruption(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, SMALL_STATE)
    intact = path.read_bytes()
    for position in range(len(intact)):
        damaged = bytearray(intact)
        damaged[position] ^= 0x10
        path.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match="is corrupt"):
            load_checkpoint(path)
    path.write_bytes(intact[:-100])
    with pytest.raises(CheckpointError, match="is corrupt"):
        load_checkpoint(path)
    path.write_bytes(intact)
    assert load_checkpoint(path)["step"] == 3


def test_the_checksum_names_the_fix(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, SMALL_STATE)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=r"is corrupt: its bytes do not match the sha256 checksum .* use another "
                                              r"checkpoint, e\.g\. checkpoints/best\.pt"):
        load_checkpoint(path)


@pytest.mark.parametrize("writer", ["sealed v2", "unsealed v1"])
def test_a_malicious_checkpoint_is_refused_and_its_payload_never_runs(tmp_path, writer):
    marker, path = tmp_path / "payload-ran", tmp_path / "evil.pt"
    state = {**SMALL_STATE, "config": Payload(marker)}
    if writer == "sealed v2":
        write_sealed(path, state)
    else:
        torch.save({**state, "format": "lsgm-checkpoint-v1"}, path)
    with pytest.raises(CheckpointError, match=UNSAFE + r" \['io.open'\]"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=UNSAFE):
        load(path)
    assert not marker.exists()


def test_a_trainer_refuses_to_resume_from_a_malicious_last_checkpoint(tmp_path):
    marker = tmp_path / "payload-ran"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    write_sealed(tmp_path / "run" / "checkpoints" / "last.pt", {**SMALL_STATE, "model": Payload(marker)})
    with pytest.raises(CheckpointError, match=UNSAFE):
        Trainer(tiny_config(), tmp_path / "run")
    assert not marker.exists()


def test_a_disk_full_save_removes_its_temporary_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, SMALL_STATE)

    def disk_full_save(obj, file, *args, **kwargs):
        with open(file, "wb") as handle:
            handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full_save)
    with pytest.raises(CheckpointWriteError, match=r"could not write checkpoint .*last\.pt: No space left on device; "
                                                   r"\d+ bytes free there; the previous checkpoint there \(if any\) "
                                                   "is intact") as caught:
        save_checkpoint(path, {**SMALL_STATE, "step": 4})
    assert isinstance(caught.value, OSError) and isinstance(caught.value, CheckpointError)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    assert load_checkpoint(path)["step"] == 3


def test_torch_writer_failure_on_a_full_disk_is_named_as_such(tmp_path, monkeypatch):
    def torch_writer_failure(obj, file, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 640 vs 534")

    monkeypatch.setattr(torch, "save", torch_writer_failure)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda folder: namedtuple("Usage", "total used free")(1, 1, 0))
    with pytest.raises(CheckpointWriteError, match=r"No space left on device: torch\.save failed \(\[enforce fail .*"
                                                   r"unexpected pos 640 vs 534\); 0 bytes free there"):
        save_checkpoint(tmp_path / "last.pt", SMALL_STATE)
    assert list(tmp_path.iterdir()) == []


def test_a_state_that_is_not_plain_data_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"state\['progress'\]\['clock'\] is a numpy.ndarray; a checkpoint holds "
                                        r"tensors and plain containers only"):
        save_checkpoint(tmp_path / "last.pt", {**SMALL_STATE, "progress": {"step": 1, "clock": np.zeros(2)}})
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_folder_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(CheckpointWriteError, match=r"could not write checkpoint .*file/checkpoints/last\.pt: "):
        save_checkpoint(tmp_path / "file" / "checkpoints" / "last.pt", SMALL_STATE)


def test_a_v1_checkpoint_loads_read_only_with_a_notice_and_converts(tmp_path, trainer_state):
    v1, v2 = tmp_path / "v1.pt", tmp_path / "v2.pt"
    old_rng = write_v1(v1, trainer_state)
    with pytest.warns(LegacyCheckpointWarning, match="is an lsgm-checkpoint-v1 checkpoint, loaded for reading only"):
        model = load(v1)
    assert torch.equal(model.state_dict()["score_net.conv_in.weight"],
                       trainer_state["ema"]["shadow"]["score_net.conv_in.weight"])
    with pytest.raises(CheckpointError, match=r"is an lsgm-checkpoint-v1 checkpoint .* to resume training convert it "
                                              r"first: python -m lsgm\.checkpoint source=.*v1\.pt destination=NEW\.pt"):
        load_checkpoint(v1)
    result = subprocess.run([sys.executable, "-m", "lsgm.checkpoint", f"source={v1}", f"destination={v2}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    state = load_checkpoint(v2)
    assert state["format"] == FORMAT and state["step"] == trainer_state["step"]
    assert np.array_equal(state["rng"]["numpy"]["key"].numpy(), old_rng["numpy"][1])
    assert tuple(state["rng"]["python"]["internal"].tolist()) == old_rng["python"][1]


def test_a_v1_checkpoint_still_refuses_anything_but_numpy_arrays(tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({**SMALL_STATE, "format": "lsgm-checkpoint-v1", "rng": {"numpy": np.random.get_state()},
                "extra": Payload(marker)}, tmp_path / "v1.pt")
    with pytest.raises(CheckpointError, match=UNSAFE + r" \['io.open'\]"):
        upgrade_checkpoint(tmp_path / "v1.pt", tmp_path / "v2.pt")
    assert not marker.exists() and not (tmp_path / "v2.pt").exists()


def test_a_cuda_device_without_cuda_is_named(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    save_checkpoint(tmp_path / "last.pt", SMALL_STATE)
    with pytest.raises(ValueError, match=r"device 'cuda' is not available here .* pass device='cpu'"):
        load(tmp_path / "last.pt", device="cuda")


def test_save_pretrained_round_trips_to_the_same_samples(tmp_path, trainer_state):
    save_checkpoint(tmp_path / "best.pt", trainer_state)
    model = load(tmp_path / "best.pt")
    folder = save_pretrained(model, tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    record = json.loads((folder / "config.json").read_text())
    assert record["data_shape"] == [1, 8, 8] and record["levels"] == 17 and record["num_classes"] is None
    again = from_pretrained(folder)
    for name, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    torch.manual_seed(0)
    expected, _ = model.sample(3, sampler="heun", steps=3)
    torch.manual_seed(0)
    samples, _ = again.sample(3, sampler="heun", steps=3)
    assert torch.equal(samples, expected)
    weights = bytearray((folder / "model.safetensors").read_bytes())
    weights[-1] ^= 0x01
    (folder / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt: its sha256 differs"):
        load(folder)
