"""The console scripts pyproject.toml declares: each names an importable function, and each command reports its
errors under the script's name (a fresh install runs them in tests/test_install.py)."""

import importlib
import sys
from pathlib import Path

import pytest

from lsgm import scripts
from lsgm.cli import BAD_INPUT, CommandError

ROOT = Path(__file__).resolve().parents[2]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def declared_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_declared_script_is_a_function_of_the_package():
    declared = declared_scripts()
    assert set(declared) == {"lsgm-train", "lsgm-sample", "lsgm-evaluate", "lsgm-inpaint", "lsgm-interpolate"}
    for target in declared.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target


@pytest.mark.parametrize("name", ["sample", "evaluate", "inpaint", "interpolate"])
def test_a_script_names_itself_in_its_errors(name, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"lsgm-{name}", "no_such_key=1"])
    with pytest.raises(CommandError) as stopped:
        getattr(scripts, name)()
    assert stopped.value.code == BAD_INPUT
    assert capsys.readouterr().err.startswith(f"lsgm-{name}: error: unknown argument no_such_key=1; valid: ")


def test_a_script_prints_its_own_usage(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["lsgm-sample", "sampler=dpm2m", "--help"])
    with pytest.raises(SystemExit) as stopped:
        scripts.sample()
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lsgm-sample key=value ...")
    assert "    sampler=ddim|ddpm|dpm2m|heun|ode|pc|sde\n" in out  # training's sampler group
    assert "sampler:\n  name: dpm2m\n  options:\n    steps: 20\n" in out  # the config composed with the arguments
