"""The command lines of the entry points beside training (`python -m lsgm.sample ...`): hydra overrides of a config
file per command, composed with hydra's compose API and the same config groups as training.

    python -m lsgm.sample ckpt=runs/x/checkpoints/best.pt sampler=dpm2m sampler.options.steps=10
    python -m lsgm.evaluate ckpt=... tasks=[nll,bound] logger=none

Each command's primary config is a file of `lsgm.config_dir()` (configs/sample.yaml, evaluate.yaml, inpaint.yaml,
interpolate.yaml; installed with the package as lsgm/configs): its keys and defaults, and in its defaults list the
training groups it shares (`sampler`, and `logger` for evaluate), so `sampler=dpm2m sampler.options.steps=10` means
what it means to train_joint.py. Arguments follow hydra's override grammar (`key=value`, lists as `key=[a,b]`,
`group=option`) without hydra's run folders, logging or multirun: `--help` prints the composed config and exits 0;
an unknown key, a group option that does not exist, a value that does not parse, a flag, a sweep (`a=1,2`),
hydra's own settings (`hydra.*`), an interpolation that does not resolve or a required key left out (`ckpt`) is one
line naming the fix. Each command checks every value before it loads a model or does any work.

Sampler options are in hydra's struct mode, as in training: an option that the sampler's config file lists is set
as `sampler.options.steps=10`, one it does not list is added as `+sampler.options.eta=0.5` (`++` sets it either
way, `~sampler.options.steps` deletes it). The mapping is not opened for these commands so that a line of
overrides means the same to them and to train_joint.py, and so that a misspelt option (`sampler.options.stpes=10`)
is refused at once; whether the sampler takes an added option is checked against it (and the model) before
sampling. Other keys are fixed by the command's config: they are set, never added (+) or deleted (~).

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

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .paths import config_dir

BAD_INPUT, DIVERGED, INTERRUPTED = 2, 3, 4
# what hydra.compose raises on arguments it cannot compose (a TypeError for some, e.g. sampler=[1])
COMPOSITION_ERRORS = (HydraException, OmegaConfBaseException, TypeError, ValueError)
MAPPING_CONFIG = "_lsgm_command_defaults"  # hydra's ConfigStore name of a command given as a mapping of defaults


class UsageError(ValueError):
    """A command-line argument the entry point does not accept."""


class CommandError(SystemExit):
    """A command's exit on an error (status BAD_INPUT, DIVERGED or INTERRUPTED); str() is the one line it printed."""

    def __init__(self, message: str, code: int = BAD_INPUT):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- composing a command's config ------------------------------------------------------------------------------
def compose(config: str | Mapping, overrides: Sequence[str] = ()) -> DictConfig:
    """The config of a command: `config` (the name of its primary config in `lsgm.config_dir()`, such as "sample";
    or, for a command without a file, a mapping of its defaults) composed by hydra with the `overrides`, resolved,
    with every required (`???`) key given. Anything else is a UsageError naming the fix (module docstring)."""
    cfg = composed(config, overrides)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as error:
        raise UsageError(f"cannot resolve the arguments {list(overrides)}: {first_line(error)}") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UsageError(f"missing required argument(s): {', '.join(f'{key}=...' for key in missing)}")
    return cfg


def composed(config: str | Mapping, overrides: Sequence[str]) -> DictConfig:
    """hydra.compose of the primary config with `overrides`, unresolved; hydra's errors as UsageErrors."""
    name = primary_config(config)
    has_sampler = "sampler" in config_groups(name)
    parsed = [parse_override(argument, has_sampler) for argument in overrides]
    with hydra_configs():
        try:
            cfg = hydra_compose(name, list(overrides))
        except COMPOSITION_ERRORS as error:
            raise composition_error(error, name, parsed) from None
    return cfg


def primary_config(config: str | Mapping) -> str:
    """The name hydra composes: a config file's name, or a mapping stored in hydra's ConfigStore."""
    if isinstance(config, str):
        return config
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=MAPPING_CONFIG, node=dict(config))
    return MAPPING_CONFIG


@contextlib.contextmanager
def hydra_configs():
    """hydra initialised on `lsgm.config_dir()` for the body (and its previous state restored after)."""
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        yield


def hydra_compose(name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose as compose_config

    return compose_config(name, overrides=overrides)


def parse_override(argument: str, has_sampler: bool = False):
    """One argument parsed by hydra's override parser (to name it when it does not parse). Flags, sweeps and
    hydra's own settings are refused, since these commands make no run folder; so is adding (+, ++) or deleting (~)
    a key other than a sampler option (of a command with a `sampler`): a command's keys are its config file's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if argument.startswith("-"):
        raise UsageError(f"unknown flag {argument}; the arguments are key=value overrides (--help lists them)")
    try:
        override = OverridesParser.create().parse_override(argument)
    except HydraException as error:
        raise UsageError(f"cannot parse {argument!r} ({first_line(error)}); write key=value, lists as key=[a,b], "
                         "and quote values with spaces or brackets ('a b')") from None
    if override.is_hydra_override():
        raise UsageError(f"{argument}: hydra's own settings do not apply to this command (it makes no run folder)")
    if override.is_sweep_override():
        raise UsageError(f"{argument} is a sweep, which this command does not run; write a list as key=[a,b]")
    changes_keys = override.is_add() or override.is_force_add() or override.is_delete()
    if changes_keys and not (has_sampler and override.key_or_group.startswith("sampler.options.")):
        where = "only a sampler option is added or deleted (+sampler.options.KEY=VALUE, ~sampler.options.KEY)" \
            if has_sampler else "no key is added (+) or deleted (~)"
        raise UsageError(f"{argument}: the keys of this command are those of its config (--help lists them); "
                         f"{where}")
    return override


def composition_error(error: Exception, name: str, overrides: list) -> UsageError:
    """hydra's error on composing `name` with `overrides` as one line: the option or key that does not exist and
    the valid ones, or its first line."""
    from hydra.errors import MissingConfigException

    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, option = error.missing_cfg_file.rpartition("/")
        return UsageError(f"unknown {group} {option!r}; valid: {', '.join(error.options)}")
    message = str(error)
    unknown = re.match(r"Could not override '([^']+)'", message)
    if unknown:
        key = unknown.group(1)
        given = next((o.input_line for o in overrides if o.key_or_group == key), key)
        hint = (f" (sampler.options holds the options that the sampler's config file lists: add another as +{given},"
                " as in training)" if key.startswith("sampler.options.") else "")
        return UsageError(f"unknown argument {given}{hint}; valid: {', '.join(valid_arguments(name, overrides))}")
    present = re.match(r"Could not append to config. An item is already at '([^']+)'", message)
    if present:
        return UsageError(f"{present.group(1)} is already in the config; set it without the + (or with ++)")
    return UsageError(f"cannot compose the arguments: {' '.join(message.split())}")


def valid_arguments(name: str, overrides: list) -> list[str]:
    """What a command accepts (its groups' `group=<options>` and its dotted keys), as composed with the given
    group choices (sampler=dpm2m lists dpm2m's options)."""
    groups = config_groups(name)
    chosen = [o.input_line for o in overrides if o.key_or_group in groups and not (o.is_add() or o.is_delete())]
    try:
        cfg = hydra_compose(name, chosen)
    except COMPOSITION_ERRORS:
        cfg = hydra_compose(name, [])
    return [f"{group}=<{'|'.join(options)}>" for group, options in groups.items()] + dotted_keys(plain(cfg))


def config_groups(name: str) -> dict[str, list[str]]:
    """The config groups in the defaults list of primary config `name` and the options of each."""
    path = config_dir() / f"{name}.yaml"
    entries = OmegaConf.load(path).get("defaults", []) if path.is_file() else []
    groups = [next(iter(entry)) for entry in entries if isinstance(entry, Mapping)]
    return {group: sorted(option.stem for option in (config_dir() / group).glob("*.yaml")) for group in groups}


def dotted_keys(cfg: Mapping, prefix: str = "") -> list[str]:
    """The keys of a config, nested ones dotted (`nll.k`); `+options.<key>` for an empty mapping (struct mode: a
    key is added to it with a +)."""
    keys = []
    for key, value in cfg.items():
        if isinstance(value, Mapping):
            keys += dotted_keys(value, f"{prefix}{key}.") if value else [f"+{prefix}{key}.<key>"]
        else:
            keys.append(f"{prefix}{key}")
    return keys


def usage(config: str | Mapping, overrides: Sequence[str], program: str) -> str:
    """The text of `--help`: how to give arguments, the groups the command shares with training, and its config
    composed with the other arguments."""
    name = primary_config(config)
    groups = config_groups(name)
    lines = [f"usage: {invocation(program)} key=value ...", "",
             "Arguments are hydra overrides of the config below: key=value, lists as key=[a,b]."]
    if groups:
        lines.append("Config groups shared with training (lsgm.config_dir()/<group>/<option>.yaml):")
        lines += [f"    {group}={'|'.join(options)}" for group, options in groups.items()]
    if "sampler" in groups:
        lines.append("A sampler option its config does not list is added as +sampler.options.KEY=VALUE (as in "
                     "training; ~sampler.options.KEY deletes one).")
    cfg = composed(config, overrides)
    return "\n".join([*lines, "", "config:", OmegaConf.to_yaml(cfg).rstrip()])


def invocation(program: str) -> str:
    """How a user runs `program`: a module (lsgm.sample) as `python -m lsgm.sample`, a console script (lsgm-sample)
    by its name."""
    return f"python -m {program}" if "." in program else program


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
    except FloatingPointError as error:  # NonFiniteError (a sampler's), or a decoder's non-finite output
        stop(program, f"{error}; or lower temperature, guidance or the sampler's options", DIVERGED)
    except KeyboardInterrupt:
        stop(program, "interrupted", INTERRUPTED)


def stop(program: str, message: str, code: int) -> None:
    """Print `program: error: message` on stderr and exit with `code`."""
    line = f"{program}: error: {message}"
    print(line, file=sys.stderr)
    raise CommandError(line, code) from None


def run(main, config: str | Mapping, program: str, argv: list[str] | None = None):
    """main(cfg) on the command's config (`compose` of `config` with argv, default sys.argv[1:]), reporting the
    errors a user can cause (`reporting_errors`); `-h`/`--help` prints `usage` and exits 0."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with reporting_errors(program):
        if any(argument in ("-h", "--help") for argument in argv):
            print(usage(config, [a for a in argv if a not in ("-h", "--help")], program))
            raise SystemExit(0)
        return main(compose(config, argv))
