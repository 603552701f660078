"""The console scripts that pyproject.toml installs beside `lsgm-train` (lsgm.train_app): each runs the `python -m`
command of the same module, with the same arguments (hydra overrides of the module's config file, such as
`sampler=dpm2m sampler.options.steps=10`) and exit codes (lsgm.cli), and names itself by the script's name in its
messages.

    lsgm-sample       python -m lsgm.sample
    lsgm-evaluate     python -m lsgm.evaluate
    lsgm-inpaint      python -m lsgm.apps.inpaint
    lsgm-interpolate  python -m lsgm.apps.interpolate
"""

from __future__ import annotations

import importlib

from .cli import run


def sample() -> None:
    from . import sample as command

    run(command.main, command.CONFIG, "lsgm-sample")


def evaluate() -> None:
    from . import evaluate as command

    run(command.main, command.CONFIG, "lsgm-evaluate")


def inpaint() -> None:
    command = importlib.import_module("lsgm.apps.inpaint")  # lsgm.apps.inpaint is also the package's function

    run(command.run, command.CONFIG, "lsgm-inpaint")


def interpolate() -> None:
    command = importlib.import_module("lsgm.apps.interpolate")  # lsgm.apps.interpolate is also the package's function

    run(command.run, command.CONFIG, "lsgm-interpolate")
