"""Evaluation of trained models: likelihood bounds in bits/dim, samples, and the `python -m lsgm.evaluate` entry.

Each model kind gives its own NLL bound per image in nats (`model.nll`, see `lsgm.models`): LSGM's importance-
weighted bound with the ODE likelihood of the latents, the VAE's importance-weighted bound, the ODE likelihood of
dequantized pixels, DDPM's variational bound. Bits/dim = nats/(D ln 2), D = C·H·W; the reported error is the
standard error of the mean over test images. The NLL, the progressive-coding chain and the sampling show progress
bars on stderr (`lsgm.progress`; `progress=false` on the command line: none).

`python -m lsgm.evaluate` writes to its `out` folder nll.json, bound.json, quality.json, the plots, samples.npz,
summary.json, and its tables through `RunLogger.log_table`: tables/rate_distortion.csv (a row per step of the
progressive-coding chain), tables/nll.csv and tables/quality.csv (one row each), also logged to wandb as
`wandb.Table`s (unless logger=none). Its arguments are hydra overrides of configs/evaluate.yaml (`lsgm.cli`;
`--help` prints it), which shares training's `sampler` and `logger` groups: the quality task samples with the
run's own sampler (`+sampler.options.steps=10` changes its options) unless `sampler=NAME` picks
configs/sampler/NAME.yaml (`sampler=dpm2m sampler.options.steps=10`, as in training); wandb logs as the run did
unless `logger=none|wandb` or `logger.mode=...` say otherwise.

    python -m lsgm.evaluate ckpt=runs/x/checkpoints/best.pt tasks=[nll,quality] sampler=dpm2m logger=none
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from sde.solvers import ADAPTIVE_ODE_METHODS

from . import cli
from .build import load, load_splits, plain
from .cli import run
from .data import SPLITS
from .log import MODES, RunLogger
from .metrics import plots
from .metrics.quality import sample_quality
from .models import ScoreModel
from .models.base import nats_to_bits_per_dim
from .progress import progress_bar
from .sample import check_memory, check_sampler, check_sampler_options, draw, with_defaults, write_samples


@torch.no_grad()
def validation_bound(model, x: torch.Tensor, phase: str, repeats: int = 4, scheme: str | None = None,
                     t_eps: float = 1e-2, batch_size: int = 512) -> float:
    """A cheap stochastic bound in bits/dim for model selection (the caller fixes the seed): the model's
    `validation_nats` in training phase `phase` averaged over `repeats` draws (DDPM: L_simple/(D ln 2), a loss),
    with time sampling `scheme` (None: the model's likelihood scheme, importance-sampled for VP)."""
    total = sum(model.validation_nats(batch, phase, t_eps, scheme).sum().item()
                for _ in range(repeats) for batch in x.split(batch_size))
    return total / (repeats * x.shape[0] * x[0].numel() * math.log(2))


@torch.no_grad()
def generate(model, n: int, sampler_cfg, prior: str | None = None, generator=None) -> tuple[torch.Tensor, int]:
    """n samples in [−1, 1] with the configured sampler (`name` + `options`); `prior="vae"` makes an LSGM sample
    its VAE's own prior."""
    cfg = plain(sampler_cfg)
    options = {**cfg.get("options", {}), **({"prior": prior} if prior else {})}
    return model.sample(n, sampler=cfg["name"], generator=generator, **options)


@dataclass
class NLLResult:
    """Per-image negative log-likelihood bounds (nats) and their summary in bits/dim."""

    nats: torch.Tensor
    dims: int
    nfe: int

    @property
    def bpd(self) -> float:
        return nats_to_bits_per_dim(self.nats.mean(), self.dims).item()

    @property
    def bpd_stderr(self) -> float:
        spread = self.nats.std() / math.sqrt(self.nats.numel()) if self.nats.numel() > 1 else torch.tensor(0.0)
        return nats_to_bits_per_dim(spread, self.dims).item()


def test_nll(model, x: torch.Tensor, k: int = 1, batch_size: int = 128, progress: bool = True,
             **ode_options) -> NLLResult:
    """The NLL bound of every image in x, batch by batch (see the module docstring for the bound used), with a
    progress bar over the images unless `progress` is false."""
    model.eval()
    nats, nfe = [], 0
    with progress_bar(progress, total=len(x), desc="test NLL", unit="image") as bar:
        for batch in x.split(batch_size):
            values, calls = model.nll(batch, k, **ode_options)
            nats.append(values)
            nfe += calls
            bar.update(len(batch))
    return NLLResult(torch.cat(nats).cpu(), x[0].numel(), nfe)


# --- progressive coding -----------------------------------------------------------------------------------------
@torch.no_grad()
def progressive_predictions(model, x: torch.Tensor, steps, T: int = 1000, generator: torch.Generator | None = None,
                            progress: bool = True) -> list[torch.Tensor]:
    """x̂_0 along one progressive-decoding chain (DDPM Alg. 4's receiver): x_T ~ q(x_T|x_0), then
    x_{t−1} ~ q(x_{t−1}|x_t, x_0); at each of `steps` the prediction x̂_0 = (x_t − √(1−ᾱ_t) ε_θ)/√ᾱ_t, in data
    space (decoded for LSGM). Returns one (B, C, H, W) tensor per step, in the order of `steps`; a progress bar
over the chain's steps unless `progress` is false."""
    schedule = model.chain(T)
    eps_fn = model.discrete_eps_fn(schedule)
    x0 = model.encode(x)
    wanted = {int(s) for s in steps}
    noise = lambda: torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # noqa: E731
    x_t = schedule.q_sample(x0, schedule.T, noise())
    predictions = {}
    for t in progress_bar(progress, iterable=range(schedule.T, 0, -1), desc="progressive coding", unit="step"):
        step = torch.full((x0.shape[0],), t, device=x0.device)
        if t in wanted:
            x0_hat = schedule.x0_from_eps(x_t, step, eps_fn(x_t, step))
            predictions[t] = model.decode(x0_hat, mean=True)
        if t > 1:
            mean, var, _ = schedule.q_posterior(x0, x_t, step)
            x_t = mean + var.sqrt() * noise()
    return [predictions[int(s)] for s in steps]


# --- python -m lsgm.evaluate --------------------------------------------------------------------------------------
CONFIG = "evaluate"  # configs/evaluate.yaml: the command's keys and defaults


def log_records(logger: RunLogger, name: str, records: list[dict]) -> Path:
    """Records sharing their keys as the table `name` (columns: the keys; a row per record): tables/<name>.csv and a
    wandb.Table at step 0, the evaluation's one step; returns the CSV's path."""
    return logger.log_table(name, list(records[0]), [list(record.values()) for record in records], step=0)


def _print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(" | ".join(rows[0]))
    for row in rows:
        print(" | ".join(f"{v:.5g}" if isinstance(v, float) else str(v) for v in row.values()))


def nll_settings(model, options: dict) -> dict:
    """`nll` options with each null (k, rtol, atol, method) taken from the run's own final evaluation
    (`train.final_eval`: k and its ODE tolerances, chosen by benchmarks/nll_tolerance.py, and its ODE method), else
    k = 4, 1e-5 and dopri5, so that `lsgm.evaluate` reproduces the NLL its training run reported."""
    final = plain(model.config.get("train", {})).get("final_eval") or {}
    ode = final.get("ode") or {}
    run = {"k": final.get("k", 4), "method": ode.get("method", "dopri5"),
           **{key: ode.get(key, 1e-5) for key in ("rtol", "atol")}}
    return {**options, **{key: run[key] for key in run if options.get(key) is None}}


def run_nll(model, x, cfg, out: Path, logger: RunLogger) -> dict:
    """The NLL bound of x: nll.json and the one-row table `nll`; returns its summary."""
    options = nll_settings(model, plain(cfg.nll))
    result = test_nll(model, x, k=options.pop("k"), batch_size=cfg.batch_size, progress=cfg.progress, **options)
    summary = {"nll_bits_per_dim": result.bpd, "nll_bits_per_dim_stderr": result.bpd_stderr, "nll_nfe": result.nfe,
               "nll_images": x.shape[0]}
    (out / "nll.json").write_text(json.dumps(summary, indent=2))
    log_records(logger, "nll", [summary])
    print(f"NLL: {result.bpd:.4f} ± {result.bpd_stderr:.4f} bits/dim over {x.shape[0]} images "
          f"({result.nfe} ODE function evaluations)")
    return summary


def run_bound(model, x, cfg, out: Path, generator, logger: RunLogger) -> tuple[dict, dict]:
    """The diffusion bound and progressive coding of x: bound.json, the table `rate_distortion` (a row per step) and
    the plots; returns its summary numbers and plots."""
    options = cfg.bound
    pairs = x.shape[0] * (options.num_steps or options.T)  # (image, step) pairs the bound evaluates
    with progress_bar(cfg.progress, total=pairs, desc="diffusion bound", unit="pair") as bar:
        summary, table = model.diffusion_bound(x, options.T, options.num_steps, options.batch_size, generator,
                                               on_chunk=bar.update)
    rows = table.rows()
    log_records(logger, "rate_distortion", rows)
    nearest = [min(rows, key=lambda row: abs(row["step"] - step)) for step in options.report_steps]
    report = [row for i, row in enumerate(nearest) if row not in nearest[:i]]  # the evaluated steps nearest to them
    _print_table("progressive coding (rate in bits/dim received once x_t is known; RMSE on 0..levels−1)", report)
    print("bound: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()))
    images = {"bound_terms": plots.plot_bound_terms(table, out / "bound_terms.png"),
              "rate_distortion": plots.plot_rate_distortion(table, out / "rate_distortion.png")}
    shown = x[: options.progressive_images]
    steps = sorted({s for s in options.report_steps if s <= table.T}, reverse=True)  # coding order: t = T first
    predictions = progressive_predictions(model, shown, steps, options.T, generator, cfg.progress)
    labels = [f"t = {step}" for step in steps] + ["original"]
    images["progressive"] = plots.save_progressive_grid([*predictions, shown], out / "progressive.png", labels)
    (out / "bound.json").write_text(json.dumps(summary, indent=2))
    return {f"bound_{k}": v for k, v in summary.items()}, images


def quality_sampler(model, sampler) -> tuple[str, dict]:
    """The quality task's sampler and its options: `sampler.name` with the composed `sampler.options` (sampler=NAME:
    configs/sampler/NAME.yaml's), or else the run's own sampler with its options under the given ones; checked
    against what the sampler takes."""
    chosen = plain(sampler)
    own = plain(model.config.sampler)
    name = chosen["name"] or own["name"]
    defaults = own.get("options", {}) if chosen["name"] is None else {}
    options = with_defaults(name, chosen["options"], defaults)
    return name, check_sampler_options(model, name, options)


def run_quality(model, cfg, out: Path, device, logger: RunLogger) -> tuple[dict, dict]:
    """Sample quality of the model's samples: samples.npz, quality.json and the one-row table `quality`; returns its
    numbers and the sample grid."""
    options = cfg.quality
    sampler, sampler_options = quality_sampler(model, cfg.sampler)
    images, nfe = draw(model, options.num_samples, sampler, sampler_options, seed=cfg.seed, progress=cfg.progress)
    npz, png = write_samples(images, model.levels, out / "samples.npz")
    metrics = sample_quality(images, data=model.config.data.name, root=model.config.data.root,
                             inception_weights=options.inception_weights, device=device)
    metrics = {**metrics, "sampler": sampler, "sampler_nfe": nfe, "num_samples": options.num_samples}
    (out / "quality.json").write_text(json.dumps(metrics, indent=2))
    log_records(logger, "quality", [metrics])
    print("sample quality: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in metrics.items()))
    return {f"quality_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, {"samples": png}


def logger_settings(model, logger) -> dict:
    """The run's own logger settings (`model.config.logger`) under the values `logger` gives (logger=NAME: those of
    configs/logger/NAME.yaml; logger.mode=...: the mode alone)."""
    given = {key: value for key, value in plain(logger).items() if value is not None}
    return {**plain(model.config.logger), **given}


def check_arguments(cfg) -> None:
    """Every argument the model is not needed to check, before loading it."""
    cli.path(cfg.ckpt, "ckpt")
    for task in cli.non_empty_list(cfg.tasks, "tasks", "[nll,bound]"):
        cli.choice(task, TASKS, "task")
    cli.choice(cfg.split, SPLITS, "split")
    cli.optional_positive_integer(cfg.max_images, "max_images")
    cli.positive_integer(cfg.batch_size, "batch_size")
    cli.seed(cfg.seed)
    cli.boolean(cfg.progress, "progress")
    if cfg.out is not None:
        cli.output_folder(cfg.out, "out")
    logger = cli.mapping(cfg.logger, "logger", "logger=none")
    if logger["mode"] is not None:
        cli.choice(logger["mode"], MODES, "logger.mode")
    for key in ("project", "group"):  # the settings, besides the mode, that the evaluation's wandb run takes
        if logger.get(key) is not None and not isinstance(logger[key], str):
            raise cli.UsageError(f"logger.{key} must be a name, got {cli.plain(logger[key])!r}")
    for task, (check, example) in TASK_CHECKS.items():
        if task in cfg.tasks:
            check(cli.mapping(cfg[task], task, example))
    if "quality" in cfg.tasks:
        cli.mapping(cfg.sampler, "sampler", "sampler=dpm2m")
        if cfg.sampler.name is not None:
            check_sampler(cfg.sampler.name)
        cli.mapping(cfg.sampler.options, "sampler.options", "+sampler.options.steps=20")


def check_nll_options(options: dict) -> None:
    cli.optional_positive_integer(options["k"], "nll.k")
    if options.get("method") is not None:
        cli.choice(options["method"], ADAPTIVE_ODE_METHODS, "nll.method")
    for key in ("rtol", "atol"):
        if options[key] is not None:
            cli.positive_number(options[key], f"nll.{key}")
    cli.positive_integer(options["repeats"], "nll.repeats")


def check_bound_options(options: dict) -> None:
    cli.positive_integer(options["T"], "bound.T")
    cli.optional_positive_integer(options["num_steps"], "bound.num_steps")
    cli.positive_integer(options["batch_size"], "bound.batch_size")
    for step in cli.non_empty_list(options["report_steps"], "bound.report_steps", "[1000,500,1]"):
        cli.positive_integer(step, "a step of bound.report_steps")
    cli.positive_integer(options["progressive_images"], "bound.progressive_images")


def check_quality_options(options: dict) -> None:
    cli.positive_integer(options["num_samples"], "quality.num_samples")
    weights = options["inception_weights"]
    if weights is not None and not cli.path(weights, "quality.inception_weights").is_file():
        raise cli.UsageError(f"quality.inception_weights={weights} is not a file; give the local "
                             "pt_inception-2015-12-05-6726825d.pth or leave it null")


def main(cfg) -> dict:
    check_arguments(cfg)
    device = cli.device(cfg.device)
    model = load(cfg.ckpt, device)
    if "quality" in cfg.tasks:
        quality_sampler(model, cfg.sampler)
        check_memory(model, cfg.quality.num_samples, "quality.num_samples")
    out = Path(cfg.out) if cfg.out else Path(cfg.ckpt).resolve().parent.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    x = load_splits(model.config.data)[cfg.split].x
    x = x[: cfg.max_images].to(device) if cfg.max_images else x.to(device)
    log_cfg = logger_settings(model, cfg.logger)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    summary, images = {}, {}
    with RunLogger(out, mode=log_cfg.get("mode", "offline"), project=log_cfg.get("project", "lsgm"),
                   group=log_cfg.get("group"), name=f"{Path(cfg.ckpt).resolve().parent.parent.name}-eval",
                   tags=["eval"], job_type="eval", config=OmegaConf.to_container(cfg)) as logger:
        if "nll" in cfg.tasks and not model.has_likelihood:  # an LDM: its decoder is not a likelihood
            rmse = torch.cat([model.reconstruction_error(batch) for batch in x.split(cfg.batch_size)])
            summary["reconstruction_rmse"] = rmse.mean().item()
            print(f"nll: a {model.kind} model has no likelihood; reconstruction RMSE {rmse.mean().item():.4f} "
                  f"± {(rmse.std() / len(rmse) ** 0.5).item():.4f} ([−1, 1] units)")
        elif "nll" in cfg.tasks:
            summary.update(run_nll(model, x, cfg, out, logger))
        if "bound" in cfg.tasks:
            if not isinstance(model, ScoreModel):
                print(f"bound: skipped (a {model.kind} model has no diffusion prior)")
            else:
                numbers, pictures = run_bound(model, x, cfg, out, generator, logger)
                summary.update(numbers)
                images.update(pictures)
        if "quality" in cfg.tasks:
            numbers, pictures = run_quality(model, cfg, out, device, logger)
            summary.update(numbers)
            images.update(pictures)
        for name, path in images.items():
            logger.log_images(name, path, 0)
        logger.log({k: v for k, v in summary.items() if isinstance(v, (int, float))}, 0)
        logger.summary(summary)
    print(f"evaluation written to {out}")
    return summary


TASKS = ("nll", "bound", "quality")
TASK_CHECKS = {"nll": (check_nll_options, "nll.k=4"), "bound": (check_bound_options, "bound.T=1000"),
               "quality": (check_quality_options, "quality.num_samples=1000")}

if __name__ == "__main__":
    run(main, CONFIG, "lsgm.evaluate")
