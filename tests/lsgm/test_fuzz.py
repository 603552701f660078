"""Fuzzing (hypothesis) of the data loaders and of the entry points' arguments (issue 14): whatever the values, a
loader returns a dataset in [−1, 1] or raises DataError, and a command finishes or exits with status 2 (3 when
sampling diverges) and one line (`lsgm.cli.CommandError`), never a traceback from deep inside.

Scope: `.npz` files (arrays of any dtype and shape under any keys, or random bytes) and image folders (images of
any size and mode, or random bytes) with any reader options; `python -m lsgm.sample` end to end on a tiny model
(loaded once); the arguments of lsgm.evaluate, lsgm.apps.inpaint and lsgm.apps.interpolate up to their checks;
raw `key=value` text through hydra's parser and composition (`lsgm.cli.compose`). Examples are few and small
(about 10 s in all on one CPU core).
"""

import importlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from lsgm import evaluate, sample
from lsgm.build import load
from lsgm.cli import BAD_INPUT, DIVERGED, CommandError, UsageError, compose, run
from lsgm.data import DataError, load_dataset

inpaint = importlib.import_module("lsgm.apps.inpaint")
interpolate = importlib.import_module("lsgm.apps.interpolate")

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

# values a careless or hostile user types: edge numbers, non-numbers, text, lists (empty, nested), options
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 5), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from(["", "abc", "nan", "-1", "[]", "a.png"]),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.lists(st.lists(SCALARS, max_size=3), max_size=2),
                   st.dictionaries(st.sampled_from(["steps", "k", "X"]), SCALARS, max_size=2))


def loaded(dataset) -> None:
    """What every loaded dataset satisfies: (N, C, H, W) floats in [−1, 1] and a usable number of levels."""
    assert dataset.x.dim() == 4 and dataset.x.dtype == torch.float32
    assert bool(torch.isfinite(dataset.x).all()) and (len(dataset) == 0 or float(dataset.x.abs().max()) <= 1)
    assert isinstance(dataset.levels, int) and dataset.levels >= 2


def loads_or_refuses(*arguments, **options) -> None:
    try:
        loaded(load_dataset(*arguments, **options))
        event("loaded")
    except DataError as error:
        event(str(error)[:60])
        assert str(error) and "\n" not in str(error).strip(), str(error)


ABSENT = object()  # a key the example leaves out


def mostly_valid(data, valid: dict, hostile_values=VALUES) -> dict:
    """One example: every key from its valid strategy except at most two, drawn from `hostile_values` instead; keys
    whose value is ABSENT are left out. So each example probes one or two bad values past the good ones."""
    hostile = data.draw(st.sets(st.sampled_from(sorted(valid)), max_size=2))
    drawn = {key: data.draw(hostile_values if key in hostile else strategy) for key, strategy in valid.items()}
    return {key: value for key, value in drawn.items() if value is not ABSENT}


# --- data files ------------------------------------------------------------------------------------------------------
def integer_arrays(dtypes, shapes, high) -> st.SearchStrategy:
    return st.builds(lambda dtype, shape, top, seed: np.random.default_rng(seed).integers(0, top, shape).astype(dtype),
                     st.sampled_from(dtypes), shapes, high, st.integers(0, 2**32 - 1))


IMAGE_ARRAYS = integer_arrays([np.uint8, np.int16, np.int64],  # binary images of the layouts the reader takes
                              st.one_of(st.tuples(st.integers(1, 5), st.sampled_from([1, 3]), st.integers(1, 4),
                                                  st.integers(1, 4)),
                                        st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 4))),
                              st.just(2))
HOSTILE_ARRAYS = st.one_of(  # odd dtypes, shapes and values; object arrays; huge numbers
    integer_arrays([np.uint8, np.int8, np.uint64, np.float32, np.bool_, np.complex64],
                   st.lists(st.integers(0, 4), max_size=5).map(tuple), st.integers(1, 300)),
    st.sampled_from([np.array(2**40), np.array(-1), np.array(["a"]), np.array([1.5]), np.array(None, dtype=object)]),
)
LABEL_ARRAYS = integer_arrays([np.int64], st.integers(1, 5).map(lambda n: (n,)), st.just(10))
SPLIT = st.sampled_from(["train", "val", "test"])


@FUZZ
@given(data=st.data())
def test_npz_files_load_or_raise_one_data_error(tmp_path_factory, data):
    arrays = mostly_valid(data, {"x": IMAGE_ARRAYS, "levels": st.sampled_from([2, 17, 256, 2**16]),
                                 "y": st.one_of(st.just(ABSENT), LABEL_ARRAYS),
                                 "other": st.one_of(st.just(ABSENT), IMAGE_ARRAYS)}, HOSTILE_ARRAYS)
    options = mostly_valid(data, {"levels": st.just(ABSENT), "split": SPLIT,
                                  "test_fraction": st.floats(0, 0.9), "val_fraction": st.floats(0, 0.9)})
    path = tmp_path_factory.getbasetemp() / "fuzz.npz"
    np.savez(path, **arrays)
    loads_or_refuses("npz", path, **options)


@FUZZ
@given(content=st.binary(max_size=64), suffix=st.sampled_from([".npz", ".png"]))
def test_files_of_random_bytes_raise_one_data_error(tmp_path_factory, content, suffix):
    folder = tmp_path_factory.getbasetemp() / "bytes"
    folder.mkdir(exist_ok=True)
    (folder / f"a{suffix}").write_bytes(content)
    loads_or_refuses("npz" if suffix == ".npz" else "folder", folder / "a.npz" if suffix == ".npz" else folder)


IMAGES = st.lists(st.tuples(st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "1"]), st.integers(1, 6),
                            st.integers(1, 6)), min_size=1, max_size=3)


@FUZZ
@given(images=IMAGES, data=st.data())
def test_image_folders_load_or_raise_one_data_error(tmp_path_factory, images, data):
    options = mostly_valid(data, {"size": st.one_of(st.none(), st.integers(1, 8)), "channels": st.sampled_from([1, 3]),
                                  "test_fraction": st.floats(0, 0.9), "split": SPLIT})
    folder = tmp_path_factory.mktemp("folder")
    for index, (mode, height, width) in enumerate(images):
        Image.new(mode, (width, height)).save(folder / f"{index}.png")
    loads_or_refuses("folder", folder, val_fraction=0.0, **options)


# --- the entry points --------------------------------------------------------------------------------------------
def finishes_or_refuses(main, config: str, program: str, argv: list[str]) -> None:
    """run(...) returns, or exits with BAD_INPUT (or DIVERGED: sampling met a non-finite value, as with
    temperature=1e30) and one line naming the program."""
    try:
        run(main, config, program, argv)
        event("finished")
    except CommandError as error:
        event(str(error)[:60])
        assert error.code in (BAD_INPUT, DIVERGED) and str(error).startswith(f"{program}: error: ")
        assert "\n" not in str(error), str(error)


def override_text(value) -> str:
    """A value in hydra's override grammar: null, true/false, numbers (nan, inf), quoted strings, [lists], {dicts}."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float) and not np.isfinite(value):
        return "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{override_text(item)}" for key, item in value.items()) + "}"
    return "[" + ",".join(override_text(item) for item in value) + "]"


def dotlist(overrides: dict) -> list[str]:
    """`key=value` arguments that hydra parses back to `overrides`."""
    return [f"{key}={override_text(value)}" for key, value in overrides.items()]


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    return load(tiny_checkpoint)


SAMPLER_OPTIONS = {  # a few steps each, and the options each sampler takes (++: whether its config lists them or not)
    "heun": {"++sampler.options.rho": st.floats(1, 10), "++sampler.options.t_eps": st.floats(1e-3, 0.1)},
    "dpm2m": {"++sampler.options.rho": st.floats(1, 10)},
    "ddim": {"++sampler.options.eta": st.floats(0, 1)},
    "sde": {"++sampler.options.method": st.sampled_from(["euler", "milstein"])},
    "pc": {"++sampler.options.snr": st.floats(0.01, 1), "++sampler.options.n_corrector": st.integers(0, 2)},
}


@FUZZ
@given(sampler=st.sampled_from(sorted(SAMPLER_OPTIONS)), data=st.data())
def test_sample_finishes_or_refuses_its_arguments(tmp_path_factory, tiny_checkpoint, tiny_model, sampler, data):
    """lsgm.sample end to end on the tiny model (loaded once: the fuzzed values are the arguments)."""
    out = tmp_path_factory.getbasetemp() / "fuzz_samples"
    arguments = mostly_valid(data, {
        "ckpt": st.just(str(tiny_checkpoint)), "num_samples": st.integers(1, 4), "batch_size": st.integers(1, 4),
        "temperature": st.floats(0.1, 1.5), "guidance": st.floats(-2, 3), "seed": st.integers(0, 2**63 - 1),
        "sampler": st.just(sampler), "++sampler.options.steps": st.integers(2, 4),
        "+sampler.options.X": st.just(ABSENT),
        "condition.class": st.just(ABSENT), "device": st.just("cpu"),
        "out": st.sampled_from(["s.npz", "s.png"]).map(lambda name: str(out / name)), **SAMPLER_OPTIONS[sampler],
    })
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(out.parent)  # a hostile `out` such as a.png is written there
        patch.setattr(sample, "load", lambda path, device: tiny_model)
        finishes_or_refuses(sample.main, sample.CONFIG, "lsgm.sample", dotlist(arguments))


def checked(module):
    """A command whose work is its argument checks alone (what these fuzz tests reach without a model)."""
    return lambda cfg: module.check_arguments(cfg)


COMMANDS = [(evaluate, "lsgm.evaluate"), (inpaint, "lsgm.apps.inpaint"), (interpolate, "lsgm.apps.interpolate")]
NESTED_KEYS = ["nll.k", "bound.T", "sampler.name", "+sampler.options.steps", "logger.mode"]  # evaluate's


@FUZZ
@given(command=st.sampled_from(COMMANDS), data=st.data())
def test_command_arguments_pass_their_checks_or_are_refused(command, data):
    module, program = command
    keys = sorted(key for key in compose(module.CONFIG, ["ckpt=model.pt"]) if key != "ckpt")
    overrides = data.draw(st.dictionaries(st.sampled_from(keys + NESTED_KEYS), VALUES, min_size=1, max_size=3))
    overrides = {key: value for key, value in overrides.items() if key.lstrip("+").split(".")[0] in keys}
    finishes_or_refuses(checked(module), module.CONFIG, program, ["ckpt=model.pt", *dotlist(overrides)])


@FUZZ
@given(text=st.text(max_size=12))
def test_raw_argument_text_parses_or_is_refused(text):
    try:
        compose(sample.CONFIG, ["ckpt=model.pt", f"out={text}", f"sampler.options.rtol={text}", text])
    except UsageError as error:
        assert "\n" not in str(error)
