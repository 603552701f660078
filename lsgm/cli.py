"""`key=value` command lines for the entry points beside training (`python -m lsgm.sample ...`).

Arguments use hydra's override syntax without hydra's run folders: `ckpt=runs/x/checkpoints/best.pt`,
`options.steps=20`, `tasks=[nll,bound]`. Unknown keys (nested ones included) are an error that lists the valid
ones. Each command checks every value before it loads a model or does any work.

Exit status of every command (`lsgm.sample`, `lsgm.evaluate`, `lsgm.apps.*`, `lsgm.metrics.quality`), the codes
train_joint.py uses too; each failure is one line `program: error: ...` on stderr:

    0    finished
    2    bad input (BAD_INPUT): an argument, path, checkpoint, data file or option the command refuses (argparse's
         status for a usage error), or a request that does not fit in memory
    3    diverged (DIVERGED): sampling or integration met a non-finite value
    4    interrupted by Ctrl-C (INTERRUPTED)
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .paths import config_dir

BAD_INPUT, DIVERGED, INTERRUPTED = 2, 3, 4


class UsageError(ValueError):
    """A command-line argument the entry point does not accept."""


class CommandError(SystemExit):
    """A command's exit on an error (status BAD_INPUT, DIVERGED or INTERRUPTED); str() is the one line it printed."""

    def __init__(self, message: str, code: int = BAD_INPUT):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def parse_arguments(defaults: dict, argv: list[str] | None = None, program: str = "lsgm") -> DictConfig:
    """The defaults merged with `key=value` arguments; `--help` prints the defaults and exits."""
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(f"usage: {invocation(program)} key=value ...\n\ndefaults:\n{OmegaConf.to_yaml(defaults)}")
        raise SystemExit(0)
    bad = [arg for arg in argv if "=" not in arg]
    if bad:
        raise UsageError(f"arguments must look like key=value, got {bad}")
    arguments = [parse_argument(arg) for arg in argv]
    unknown = sorted({key for argument in arguments for key in unknown_keys(defaults, plain(argument))})
    if unknown:
        raise UsageError(f"unknown argument(s) {unknown}; valid: {dotted_keys(defaults)}")
    try:
        merged = OmegaConf.merge(OmegaConf.create(defaults), *arguments)
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as error:
        raise UsageError(f"cannot combine the arguments {argv}: {first_line(error)}") from None
    missing = [key for key in defaults if OmegaConf.is_missing(merged, key)]
    if missing:
        raise UsageError(f"missing required argument(s): {', '.join(f'{k}=...' for k in missing)}")
    return merged


def invocation(program: str) -> str:
    """How a user runs `program`: a module (lsgm.sample) as `python -m lsgm.sample`, a console script (lsgm-sample)
    by its name."""
    return f"python -m {program}" if "." in program else program


def parse_argument(argument: str) -> DictConfig:
    """One `key=value` argument, or a UsageError naming it when its value is not valid YAML."""
    try:
        return OmegaConf.from_dotlist([argument])
    except (yaml.YAMLError, OmegaConfBaseException) as error:
        raise UsageError(f"cannot parse {argument!r} ({first_line(error)}); write lists as key=[a,b] and quote "
                         "values with spaces or brackets") from None


def unknown_keys(defaults: Mapping, given: Mapping, prefix: str = "") -> list[str]:
    """The dotted keys of `given` that `defaults` lacks. An empty dict in the defaults (sampler `options`) takes
    any keys; its entries are checked by the command."""
    unknown = []
    for key, value in given.items():
        if key not in defaults:
            unknown.append(f"{prefix}{key}")
        elif isinstance(defaults[key], Mapping) and defaults[key] and isinstance(value, Mapping):
            unknown += unknown_keys(defaults[key], value, f"{prefix}{key}.")
    return unknown


def dotted_keys(defaults: Mapping, prefix: str = "") -> list[str]:
    """The keys a command accepts, nested ones dotted (`nll.k`); `options.*` for a dict that takes any keys."""
    keys = []
    for key, value in sorted(defaults.items()):
        if isinstance(value, Mapping):
            keys += dotted_keys(value, f"{prefix}{key}.") if value else [f"{prefix}{key}.*"]
        else:
            keys.append(f"{prefix}{key}")
    return keys


def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def sampler_defaults(name: str) -> dict:
    """The options of configs/sampler/<name>.yaml (the same defaults training uses; the installed copy outside a
    clone, `lsgm.config_dir`), or {} if there is none."""
    path = config_dir() / "sampler" / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path).get("options", {})) if path.is_file() else {}


# --- checks of single values: each returns the value or raises a UsageError naming it and the fix ---------------
def is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_integer(value, name: str) -> int:
    if not is_integer(value) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return value


def non_negative_integer(value, name: str) -> int:
    if not is_integer(value) or value < 0:
        raise UsageError(f"{name} must be an integer ≥ 0, got {value!r}")
    return value


def seed(value, name: str = "seed") -> int:
    if not is_integer(value) or not 0 <= value < 2**63:
        raise UsageError(f"{name} must be an integer in 0..2**63-1, got {value!r}")
    return value


def boolean(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{name} must be true or false, got {plain(value)!r}")
    return value


def optional_positive_integer(value, name: str) -> int | None:
    return None if value is None else positive_integer(value, name)


def finite_number(value, name: str) -> float:
    if not is_number(value):
        raise UsageError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def non_negative_number(value, name: str) -> float:
    if not is_number(value) or value < 0:
        raise UsageError(f"{name} must be a finite number ≥ 0, got {value!r}")
    return float(value)


def positive_number(value, name: str) -> float:
    if not is_number(value) or value <= 0:
        raise UsageError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def fraction(value, name: str) -> float:
    if not is_number(value) or not 0 <= value <= 1:
        raise UsageError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def non_empty_list(value, name: str, example: str) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise UsageError(f"{name} must be a non-empty list such as {name}={example}, got {plain(value)!r}")
    return list(value)


def choice(value, valid, name: str):
    if not isinstance(value, str) or value not in valid:
        raise UsageError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
    return value


def mapping(value, name: str, example: str) -> dict:
    if not isinstance(value, Mapping):
        raise UsageError(f"{name} must be a set of options such as {example}, got {plain(value)!r}")
    return dict(value)


def output_file(value, name: str, suffixes: tuple[str, ...]) -> Path:
    """A path to write: a string ending in one of `suffixes`, not a folder, whose parent is not a file."""
    if not isinstance(value, str) or Path(value).suffix.lower() not in suffixes:
        raise UsageError(f"{name} must be a file name ending in {' or '.join(suffixes)}, got {plain(value)!r}")
    return writable(Path(value), name)


def output_folder(value, name: str) -> Path:
    """A folder to write into: a path that is neither an existing file nor under one."""
    folder = path(value, name)
    blocking = folder if folder.exists() and not folder.is_dir() else file_above(folder)
    if blocking is not None:
        raise UsageError(f"{name}={folder}: {blocking} is a file, not a folder; choose another folder")
    return folder


def writable(target: Path, name: str) -> Path:
    """`target`, unless it is an existing folder or lies under an existing file."""
    if target.is_dir():
        raise UsageError(f"{name}={target} is a folder; give a file name inside it")
    blocking = file_above(target)
    if blocking is not None:
        raise UsageError(f"{name}={target} lies under the file {blocking}; choose another folder")
    return target


def file_above(target: Path) -> Path | None:
    """The first of target's parents that exists and is not a folder, if any."""
    return next((parent for parent in target.parents if parent.exists() and not parent.is_dir()), None)


def path(value, name: str) -> Path:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{name} must be a path, got {plain(value)!r}")
    return Path(value)


def device(value, name: str = "device"):
    """The torch.device that `value` (auto, cpu, cuda or cuda:N) names, if this machine has it."""
    import torch

    from .distributed import resolve_device

    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise UsageError(f"{name} must be auto, cpu, cuda or cuda:N, got {plain(value)!r}")
    index = value.partition(":")[2]
    if index and torch.cuda.is_available() and int(index) >= torch.cuda.device_count():
        raise UsageError(f"{name}={value} but this machine has {torch.cuda.device_count()} GPU(s); use cuda:0.."
                         f"{torch.cuda.device_count() - 1}")
    return resolve_device(value)


def plain(value):
    """An OmegaConf container as the list or dict it holds (for messages); anything else as is."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


# --- running a command ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def reporting_errors(program: str):
    """Turn the errors a user can cause into one line `program: error: ...` on stderr and an exit status (module
    docstring), a CommandError: the library's ValueErrors, CheckpointErrors and missing files, a request beyond
    memory, non-finite sampling and Ctrl-C. LSGM_DEBUG=1 lets them through as tracebacks."""
    import torch

    from sde.solvers import NonFiniteError

    from .checkpoint import CheckpointError

    if os.environ.get("LSGM_DEBUG"):
        yield
        return
    try:
        yield
    except (CheckpointError, ValueError, FileNotFoundError) as error:
        stop(program, str(error), BAD_INPUT)
    except (MemoryError, torch.cuda.OutOfMemoryError) as error:
        stop(program, f"out of memory ({first_line(error)}); lower batch_size or the number of images", BAD_INPUT)
    except NonFiniteError as error:
        stop(program, f"{error}; or lower temperature, guidance or the sampler's options", DIVERGED)
    except KeyboardInterrupt:
        stop(program, "interrupted", INTERRUPTED)


def stop(program: str, message: str, code: int) -> None:
    """Print `program: error: message` on stderr and exit with `code`."""
    line = f"{program}: error: {message}"
    print(line, file=sys.stderr)
    raise CommandError(line, code) from None


def run(main, defaults: dict, program: str, argv: list[str] | None = None):
    """Parse arguments and return main(cfg), reporting the errors a user can cause (`reporting_errors`)."""
    with reporting_errors(program):
        return main(parse_arguments(defaults, argv, program=program))
