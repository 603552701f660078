"""`key=value` command lines for the entry points beside training (`python -m lsgm.sample ...`).

Arguments use hydra's override syntax without hydra's run folders: `ckpt=runs/x/checkpoints/best.pt`,
`options.steps=20`, `tasks=[nll,bound]`. Unknown keys are an error that lists the valid ones.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class UsageError(ValueError):
    """A command-line argument the entry point does not accept."""


def parse_arguments(defaults: dict, argv: list[str] | None = None, program: str = "lsgm") -> DictConfig:
    """The defaults merged with `key=value` arguments; `--help` prints the defaults and exits."""
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(f"usage: python -m {program} key=value ...\n\ndefaults:\n{OmegaConf.to_yaml(defaults)}")
        raise SystemExit(0)
    bad = [arg for arg in argv if "=" not in arg]
    if bad:
        raise UsageError(f"arguments must look like key=value, got {bad}")
    given = OmegaConf.from_dotlist(argv)
    unknown = [key for key in given if key not in defaults]
    if unknown:
        raise UsageError(f"unknown argument(s) {unknown}; valid: {sorted(defaults)}")
    merged = OmegaConf.merge(OmegaConf.create(defaults), given)
    missing = [key for key in defaults if OmegaConf.is_missing(merged, key)]
    if missing:
        raise UsageError(f"missing required argument(s): {', '.join(f'{k}=...' for k in missing)}")
    return merged


def sampler_defaults(name: str) -> dict:
    """The options of configs/sampler/<name>.yaml (the same defaults training uses), or {} if there is none."""
    path = CONFIG_DIR / "sampler" / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path).get("options", {})) if path.is_file() else {}


def run(main, defaults: dict, program: str, argv: list[str] | None = None):
    """Parse arguments and return main(cfg). Errors a user can cause (a bad argument, path, checkpoint or option:
    the library's ValueErrors and missing files) exit with one line `program: error: ...` (status 1) instead of a
    traceback; LSGM_DEBUG=1 re-raises them."""
    from .checkpoint import CheckpointError

    try:
        return main(parse_arguments(defaults, argv, program=program))
    except (CheckpointError, ValueError, FileNotFoundError) as error:
        if os.environ.get("LSGM_DEBUG"):
            raise
        raise SystemExit(f"{program}: error: {error}") from None
