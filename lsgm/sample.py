"""`python -m lsgm.sample ckpt=PATH [num_samples=N] [sampler=ode|sde|ddpm|ddim|heun|dpm2m|pc] [out=FILE.npz]`

Draws samples from a trained model (EMA weights) and writes them as `.npz` — first array `samples`,
N×C×H×W integers in 0..levels−1, then `levels` — with a PNG grid beside it (`out=x.npz` or `out=x.png`: both
write x.npz and x.png); prints the NFE and the two paths.

The arguments are hydra overrides of configs/sample.yaml (`lsgm.cli`; `--help` prints it), whose `sampler` is
training's group: `sampler=dpm2m sampler.options.steps=10` as in train_joint.py, the options defaulting to
configs/sampler/<name>.yaml; an option the file does not list is added as `+sampler.options.eta=0.5` (struct
mode, as in training), and a given time grid `+sampler.options.times=[...]` replaces the file's grid options
(steps, t_eps, rho). A class-conditional model takes `condition.class=3 guidance=2.0` (classifier-free guidance
scale; 0 is the unconditional model, 1 the conditional one). A progress bar counts the sampler's steps on stderr
(`progress=false`: none). Every argument is checked before the model loads, the sampler's options against what
the sampler and the model take once it has loaded.
Exit status (`lsgm.cli`): 0 done, 2 bad input, 3 sampling diverged, 4 interrupted.

    python -m lsgm.sample ckpt=runs/x/checkpoints/best.pt num_samples=16 sampler=dpm2m sampler.options.steps=10
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import torch

from sde.sampling import DEFAULT_GRIDS, SAMPLERS, sampler_options

from . import cli
from .build import load
from .cli import UsageError, run, sampler_defaults
from .data import checks, to_levels
from .images import save_image_grid, upscale_factor
from .progress import progress_bar

CONFIG = "sample"  # configs/sample.yaml: the command's keys and defaults
ADAPTIVE_SAMPLERS = ("ode",)  # steps chosen by the solver: their number is not known in advance


def draw(model, num_samples: int, sampler: str, options: dict, temperature: float = 1.0, batch_size: int = 256,
         seed: int = 0, y: torch.Tensor | None = None, guidance: float = 1.0,
         progress: bool = True) -> tuple[torch.Tensor, int]:
    """`num_samples` images in [−1, 1] in batches, reproducible from `seed` (the sampler's noise and the decoder's,
    which uses the global generator, seeded here and restored after), conditioned on labels y (N,) if given;
    returns (images, NFE of one batch). A progress bar (`lsgm.progress`) counts the sampler's steps through its
    callback, which leaves the samples as they are; its total is known after the first batch, except for the
    adaptive ODE, whose count is of network evaluations."""
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    images, nfe = [], 0
    batches = math.ceil(num_samples / batch_size)
    bar = progress_bar(progress, desc=f"sampling ({sampler}, {batches} batch{'es' if batches > 1 else ''})",
                       unit="step")
    with bar, torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, num_samples, batch_size):
            count = min(batch_size, num_samples - start)
            labels = None if y is None else y[start:start + count]
            batch, nfe = model.sample(count, sampler=sampler, temperature=temperature, generator=generator, y=labels,
                                      guidance=guidance, callback=lambda _: bar.update(), **options)
            images.append(batch.cpu())
            if start == 0 and sampler not in ADAPTIVE_SAMPLERS:
                bar.total = bar.n * batches
                bar.refresh()
    return torch.cat(images), nfe


def sample_paths(out: str | Path) -> tuple[Path, Path]:
    """The .npz and the PNG grid that `out` names: `out` with its suffix (.npz or .png) replaced by each."""
    out = Path(out)
    return out.with_suffix(".npz"), out.with_suffix(".png")


def write_samples(images: torch.Tensor, levels: int, out: str | Path) -> tuple[Path, Path]:
    """The .npz (integers in 0..levels−1; floats for continuous data, levels=None) and a PNG grid beside it, at
    `sample_paths(out)`; returns their paths."""
    npz, png = sample_paths(out)
    npz.parent.mkdir(parents=True, exist_ok=True)
    if levels is None:
        np.savez_compressed(npz, samples=images.numpy())
    else:
        integers = to_levels(images, levels).numpy().astype(np.uint8 if levels <= 256 else np.int32)
        np.savez_compressed(npz, samples=integers, levels=np.array(levels))
    save_image_grid(images[:256], png, scale=upscale_factor(*images.shape[-2:]))
    return npz, png


# --- checks of the arguments, before any work ----------------------------------------------------------------------
# model.sample's arguments that draw sets, or whose defaults it needs (its own batches; tensors out)
SET_BY_DRAW = ("n", "sampler", "temperature", "generator", "y", "guidance", "batch_size", "output_type")
NOT_OPTIONS = (*SET_BY_DRAW, "callback")
BYTES_PER_SAMPLE_ELEMENT = 17  # float32 batches + their concatenation, int64 levels, the uint8 copy written


def check_sampler(sampler, name: str = "sampler.name") -> str:
    return cli.choice(sampler, tuple(SAMPLERS), name)


def model_options(model) -> dict:
    """The keyword arguments of model.sample beyond draw's own (`prior`, `mean`), with their defaults."""
    parameters = inspect.signature(model.sample).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not p.empty and p.name not in SET_BY_DRAW}


def option_defaults(sampler: str) -> dict:
    """The defaults of a sampler's options: its function's, its grid's (`DEFAULT_GRIDS`), configs/sampler/'s."""
    parameters = inspect.signature(SAMPLERS[sampler]).parameters.values()
    function_defaults = {p.name: p.default for p in parameters if p.default is not p.empty}
    return {**function_defaults, **DEFAULT_GRIDS.get(sampler, {}), **sampler_defaults(sampler)}


def check_sampler_options(model, sampler: str, options: dict, name: str = "sampler.options") -> dict:
    """`options` if the sampler (or model.sample) takes each of them, with a value of its default's type."""
    options = cli.mapping(options, name, f"{name}.steps=20")
    model_defaults = model_options(model)
    defaults = {**option_defaults(sampler), **model_defaults}
    accepted = sorted({*(key for key in sampler_options(sampler) if key not in NOT_OPTIONS), *model_defaults})
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UsageError(f"unknown option(s) {unknown} of sampler {sampler}; valid: {', '.join(accepted)}")
    for key, value in options.items():
        if key in OPTION_CHECKS:
            OPTION_CHECKS[key](value, f"{name}.{key}")
        else:
            check_like(value, defaults.get(key), f"{name}.{key}")
    return options


def check_times(value, name: str) -> None:
    """A time grid: a list of finite numbers (the sampler checks that they decrease inside (0, 1])."""
    for time in cli.non_empty_list(value, name, "[1,0.5,0.001]"):
        cli.finite_number(time, f"an entry of {name}")


def check_timesteps(value, name: str) -> None:
    """Discrete steps: a list of integers (the sampler checks that they decrease inside the chain)."""
    for step in cli.non_empty_list(value, name, "[1000,500,1]"):
        cli.non_negative_integer(step, f"an entry of {name}")


def check_clip_range(value, name: str) -> None:
    """None, or [low, high]: two finite numbers, low < high."""
    if value is None:
        return
    bounds = cli.plain(value)
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(map(cli.is_number, bounds))
            and bounds[0] < bounds[1]):
        raise UsageError(f"{name} must be null or [low,high] with low < high, such as {name}=[-1,1]; got {bounds!r}")


OPTION_CHECKS = {  # sampler options whose values are checked beyond their default's type (the sampler checks more)
    "steps": cli.optional_positive_integer,
    "rtol": cli.positive_number, "atol": cli.positive_number, "rho": cli.positive_number, "snr": cli.positive_number,
    "t_eps": cli.positive_number, "eta": cli.non_negative_number, "n_corrector": cli.non_negative_integer,
    "times": check_times, "timesteps": check_timesteps, "clip_x0": check_clip_range,
}


def with_defaults(sampler: str, options, defaults: dict | None = None) -> dict:
    """`options` over `defaults`; when `times` is among them, without the grid options (`DEFAULT_GRIDS`: steps,
    t_eps, rho) that a given time grid replaces."""
    merged = {**(defaults or {}), **cli.mapping(options, "sampler.options", "sampler.options.steps=20")}
    if "times" in merged:
        merged = {key: value for key, value in merged.items() if key not in DEFAULT_GRIDS.get(sampler, {})}
    return merged


def check_like(value, default, name: str) -> None:
    """value is of the kind of its default: a bool, an integer, a finite number or a string (None: any)."""
    kinds = ((bool, lambda v: isinstance(v, bool), "true or false"), (int, cli.is_integer, "an integer"),
             (float, cli.is_number, "a finite number"), (str, lambda v: isinstance(v, str), "a string"))
    for kind, accepts, wording in kinds:
        if isinstance(default, kind):
            if not accepts(value):
                raise UsageError(f"{name} must be {wording} (default {default!r}), got {cli.plain(value)!r}")
            return


def check_arguments(cfg) -> None:
    """Every argument the model is not needed to check (module docstring), before loading it."""
    cli.path(cfg.ckpt, "ckpt")
    cli.positive_integer(cfg.num_samples, "num_samples")
    cli.positive_integer(cfg.batch_size, "batch_size")
    cli.positive_number(cfg.temperature, "temperature")
    cli.finite_number(cfg.guidance, "guidance")
    cli.seed(cfg.seed)
    cli.boolean(cfg.progress, "progress")
    check_sampler_config(cfg.sampler)
    label = cli.mapping(cfg.condition, "condition", "condition.class=3")["class"]
    if label is not None:
        cli.non_negative_integer(label, "condition.class")
    for path in sample_paths(cli.output_file(cfg.out, "out", (".npz", ".png"))):
        cli.writable(path, "out")


def check_sampler_config(sampler) -> None:
    """The `sampler` node: a name of `sde.sampling.SAMPLERS` and a mapping of options."""
    cli.mapping(sampler, "sampler", "sampler=dpm2m")
    check_sampler(sampler.get("name"))
    cli.mapping(sampler.get("options"), "sampler.options", "sampler.options.steps=20")


def check_memory(model, num_samples: int, name: str = "num_samples") -> None:
    """Refuse a number of samples whose images do not fit in the memory available (before drawing any)."""
    needed = num_samples * math.prod(model.data_shape) * BYTES_PER_SAMPLE_ELEMENT
    fix = f"lower {name}, or draw the samples in several runs with different seeds"
    checks.check_memory(needed, f"{name}={num_samples}", fix)


def main(cfg) -> None:
    check_arguments(cfg)
    device = cli.device(cfg.device)
    model = load(cfg.ckpt, device)
    sampler = cfg.sampler.name
    options = check_sampler_options(model, sampler, with_defaults(sampler, cfg.sampler.options))
    check_memory(model, cfg.num_samples)
    label = cfg.condition["class"]
    y = None if label is None else torch.full((cfg.num_samples,), int(label), dtype=torch.long)
    images, nfe = draw(model, cfg.num_samples, sampler, options, cfg.temperature, cfg.batch_size, cfg.seed, y,
                       cfg.guidance, cfg.progress)
    npz, png = write_samples(images, model.levels, cfg.out)
    print(f"{cfg.num_samples} samples with {sampler} ({nfe} network evaluations per batch): {npz}, grid {png}")


if __name__ == "__main__":
    run(main, CONFIG, "lsgm.sample")
