"""Which score prior learns a trained VAE's latents: parameterisation × SDE × time weighting, on frozen latents.

    python benchmarks/score_prior_ablation.py CKPT [--variants residual:cosine:drop_all_uniform ...]
        [--steps 1000] [--lr 1e-3] [--ema 0.999] [--target noise|posterior_mixture] [--guidance 1 2]
        [--per-class 50] [--seed 0] [--threads 1] [--out DIR] [--set score.net.context_in_time=true ...] [--save DIR]

CKPT is an LSGM checkpoint (class-conditional for the accuracy columns: `experiment=digits_class`). Its VAE is
frozen; for every variant `PARAMETERISATION:SDE:SCHEME` a fresh score network of the checkpoint's architecture (and
a fresh condition encoder) learns the VAE's latents — a new posterior draw of a random train-split batch of 64 each
step, AdamW at --lr, --steps steps, against --target (`lsgm.objective.SCORE_TARGETS`: ε itself, or E[ε | z_t]
under the batch's posteriors), sampled with the raw weights or, with --ema D, with their exponential moving average
(`lsgm.ema.EMA`, decay D, as training samples) — and then draws `--per-class` samples of each class (default 50) per
guidance scale with DPM-Solver++(2M), 20 steps. The checkpoint's inactive channels (`drop_inactive_var`)
stay inactive.

    PARAMETERISATION  residual  ε̂ = σ_t z_t + ε'_θ                       (score.residual=true)
                      mixed     ε̂ = (1 − α) σ_t z_t + α ε'_θ, ℓ at -3     (LSGM's mixed score, α learned)
                      net       ε̂ = ε'_θ                                  (score.mixed=false)
    SDE               a configs/sde file of the VP family: cosine, vp (linear), geometric
    SCHEME            the score model's time weighting, an `sde.SCHEMES` name (drop_all_uniform: unweighted)

Besides the variants, four rows need no score model and bound what one can reach in these latents: `posterior`
decodes a posterior draw of each train image (a perfect prior of the aggregate posterior would draw these);
`N(0, I)` draws the latents from the VAE's own prior in ε; `one Gaussian` and, for labelled data, `a Gaussian per
class` decode draws of full-covariance Gaussians fitted to ten posterior draws of every train image (the second is
drawn per requested class, a class-conditional model too).

Columns: the fraction of samples the shipped digits classifier labels as the requested class at each guidance scale
(class-conditional checkpoints; for `posterior`, the train images' own labels), the digits-FD of the guidance-1
samples (or of the unconditional ones) against the test split, the share of E[ε | z_t] learned (`learned_share`: how
far the unconditional ε̂ has moved from the VAE's own prior, 0, towards the score of the aggregate posterior, 1,
over t uniform) and the training wall time. `--variants` with no entry measures the four rows alone.

Measured: see the README, "The score prior over all of the latents".
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

import lsgm
from lsgm.build import build_model
from lsgm.checkpoint import save_pretrained
from lsgm.data import load_dataset
from lsgm.ema import EMA
from lsgm.metrics.digits_classifier import load_digits_classifier
from lsgm.metrics.quality import class_probabilities, sample_quality
from lsgm.models.latent import INACTIVE_LOGIT
from lsgm.objective import SCORE_TARGETS, denoising_terms, posterior_mixture_eps, score_posteriors
from lsgm.paths import config_dir
from lsgm.sample import draw

PARAMETERISATIONS = {"residual": {"residual": True, "mixed": True}, "mixed": {"residual": False, "mixed": True},
                     "net": {"residual": False, "mixed": False}}
DEFAULT_VARIANTS = ("mixed:geometric:ll_iw", "residual:geometric:drop_all_uniform", "mixed:cosine:drop_all_uniform",
                    "residual:vp:drop_all_uniform", "residual:cosine:drop_all_uniform")
BATCH = 64
SAMPLER = ("dpm2m", {"steps": 20})


def parse_variant(text: str) -> tuple[str, str, str]:
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in PARAMETERISATIONS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PARAMETERISATION:SDE:SCHEME with PARAMETERISATION one "
                                         f"of {', '.join(PARAMETERISATIONS)}")
    if not (config_dir() / "sde" / f"{parts[1]}.yaml").is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: no configs/sde/{parts[1]}.yaml")
    return parts[0], parts[1], parts[2]


def fresh_prior(trained, parameterisation: str, sde_name: str, overrides: list[str] = ()):
    """A new LSGM of the checkpoint's config (with `overrides`, dotlist `key=value` entries such as
    `score.net.channels=128`) with the chosen score parameterisation and SDE, a fresh score network and condition, and
    the checkpoint's VAE (frozen) and active channels."""
    config = OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(trained.config)), OmegaConf.from_dotlist(
        list(overrides)))
    config.score.update(PARAMETERISATIONS[parameterisation])
    config.sde = OmegaConf.load(config_dir() / "sde" / f"{sde_name}.yaml")
    num_classes = trained.condition.num_classes if trained.condition is not None else None
    model = build_model(config, trained.data_shape, trained.levels, num_classes)
    model.config = config
    model.vae.load_state_dict(trained.vae.state_dict())
    model.vae.requires_grad_(False)
    if not model.has_normal_base:  # ε'_θ alone must predict every channel's noise, so it sees every channel
        return model
    model.active.copy_(trained.active)
    if model.mixing_logit is not None:
        with torch.no_grad():
            model.mixing_logit[~trained.active.bool()] = INACTIVE_LOGIT  # drop_inactive_var, as the checkpoint had it
    return model


def train_prior(model, x: torch.Tensor, y: torch.Tensor | None, scheme: str, steps: int, lr: float, t_eps: float,
                generator: torch.Generator, ema_decay: float | None = None, target: str = "noise") -> None:
    """`steps` AdamW steps of the score model's denoising loss (`scheme`, against `target`, an
    `lsgm.objective.SCORE_TARGETS` name) on fresh posterior draws of the VAE's latents; with `ema_decay`, the model
    ends holding the exponential moving average of its weights."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-4)
    ema = EMA([(name, p) for name, p in model.named_parameters() if p.requires_grad], ema_decay) if ema_decay else None
    model.train()
    model.vae.eval()
    for _ in range(steps):
        index = torch.randint(0, len(x), (BATCH,), generator=generator)
        with torch.no_grad():
            latents = model.latent_terms(model.vae.encode(x[index]))
        inputs = {} if model.condition is None else model.condition.inputs(model.condition.drop(y[index]))
        loss = denoising_terms(model, latents.z, scheme, t_eps, inputs,
                               posteriors=score_posteriors(latents, target)).objective().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update()
    if ema is not None:
        ema.copy_to_parameters()
    model.eval()


def accuracy(classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (class_probabilities(classifier, images).argmax(1) == labels).float().mean().item()


def measure_samples(model, classifier, guidance: list[float], per_class: int, seed: int) -> dict:
    """Accuracy per guidance scale (class-conditional models) and the digits-FD of the first scale's samples."""
    if model.condition is None:
        images, _ = draw(model, 10 * per_class, *SAMPLER, seed=seed, progress=False)
        return {"fd": sample_quality(images)["digits_fd"]}
    labels = torch.arange(10).repeat_interleave(per_class)
    row = {}
    for scale in guidance:
        images, _ = draw(model, len(labels), *SAMPLER, seed=seed, y=labels, guidance=scale, progress=False)
        row[f"accuracy at {scale:g}"] = accuracy(classifier, images, labels)
        row.setdefault("fd", sample_quality(images)["digits_fd"])
    return row


@torch.no_grad()
def learned_share(model, x: torch.Tensor, t_eps: float, seed: int, count: int = 1000, chunk: int = 100) -> float:
    """How much of what the VAE's own prior misses the score model has learned: with ε* = E[ε | z_t] under the
    mixture of every train image's posterior (`lsgm.objective.posterior_mixture_eps`, one posterior draw per image)
    and the N(0, I) base σ_t z_t, 1 − E‖ε̂ − ε*‖² / E‖σ_t z_t − ε*‖² over `count` posterior draws diffused to
    t ~ U(t_eps, 1): 0 for the VAE's own prior, 1 for the aggregate posterior's score (unconditional ε̂)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        latents = model.latent_terms(model.vae.encode(x))
    posteriors = (latents.mean, latents.variance)
    pick = torch.randint(0, len(x), (count,), generator=generator)
    z0 = latents.z[pick]
    t = t_eps + (1 - t_eps) * torch.rand(count, generator=generator)
    noise = torch.randn(z0.shape, generator=generator)
    z_t = model.sde.perturb(z0, t, noise)
    model_error = base_error = 0.0
    for rows in torch.arange(count).split(chunk):
        target = posterior_mixture_eps(model, z_t[rows], t[rows], posteriors)
        base = model.sde.marginal(t[rows])[1].view(-1, 1, 1, 1) * z_t[rows]
        model_error += (model.guided_eps(z_t[rows], t[rows], {}) - target).pow(2).sum().item()
        base_error += (base - target).pow(2).sum().item()
    return 1 - model_error / base_error


def gaussian_draws(latents: torch.Tensor, count: int) -> torch.Tensor:
    """`count` draws of the full-covariance Gaussian fitted (in float64) to `latents` (N, *shape)."""
    flat = latents.flatten(1).double()
    covariance = torch.cov(flat.T) + 1e-6 * torch.eye(flat.shape[1], dtype=flat.dtype)
    fitted = torch.distributions.MultivariateNormal(flat.mean(0), covariance)
    return fitted.sample((count,)).to(latents.dtype).view(count, *latents.shape[1:])


def reference_rows(trained, classifier, x: torch.Tensor, y: torch.Tensor | None, guidance: list[float], per_class: int,
                   seed: int, posterior_draws: int = 10) -> dict[str, dict]:
    """The rows without a score model (module docstring): decoded posterior draws, the VAE's own prior in ε, and
    Gaussians fitted to the posterior draws, all at sampling seed `seed`."""
    every_scale = lambda images, labels: {f"accuracy at {scale:g}": accuracy(classifier, images, labels)  # noqa: E731
                                          for scale in guidance}
    decode = lambda z: trained.to_data_grid(trained.decode(z))  # noqa: E731
    rows = {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        posterior = decode(trained.encode(x))
        accuracies = every_scale(posterior, y) if y is not None else {}
        rows["posterior"] = {**accuracies, "fd": sample_quality(posterior)["digits_fd"]}
        prior = decode(torch.randn(len(x), *trained.latent_shape))
        rows["N(0, I)"] = {"fd": sample_quality(prior)["digits_fd"]}
        latents = torch.cat([trained.encode(x) for _ in range(posterior_draws)])
        one = decode(gaussian_draws(latents, 10 * per_class))
        rows["one Gaussian"] = {"fd": sample_quality(one)["digits_fd"]}
        if y is not None:
            labels = y.repeat(posterior_draws)
            requested = torch.arange(10).repeat_interleave(per_class)
            per_class_images = decode(torch.cat([gaussian_draws(latents[labels == c], per_class) for c in range(10)]))
            rows["a Gaussian per class"] = {**every_scale(per_class_images, requested),
                                            "fd": sample_quality(per_class_images)["digits_fd"]}
    return rows


def markdown(rows: dict[str, dict], guidance: list[float], conditional: bool) -> str:
    accuracy_columns = [f"accuracy at {scale:g}" for scale in guidance] if conditional else []
    headers = ["score prior (parameterisation:SDE:scheme)", *(f"requested class, guidance {scale:g}" for scale in
               guidance if conditional), "digits-FD", "E[ε | z_t] learned", "training (s)"]
    lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    for name, row in rows.items():
        cells = [f"{row[column]:.3f}" if column in row else "" for column in accuracy_columns]
        seconds = f"{row['seconds']:.0f}" if "seconds" in row else ""
        share = f"{row['learned']:.3f}" if "learned" in row else ""
        lines.append("| " + " | ".join([name, *cells, f"{row['fd']:.1f}", share, seconds]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--variants", nargs="*", type=parse_variant, default=[parse_variant(v) for v in
                                                                                DEFAULT_VARIANTS])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=None, metavar="DECAY",
                        help="sample with the EMA of the weights (training's: 0.999); default: the raw weights")
    parser.add_argument("--target", choices=SCORE_TARGETS, default="noise",
                        help="the score model's target: noise (DSM) or posterior_mixture (lsgm.objective)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--per-class", type=int, default=50, help="samples of each class (100 a class: 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides of every fresh score model (e.g. score.net.context_in_time=true)")
    parser.add_argument("--save", type=Path, default=None, metavar="DIR",
                        help="save each trained variant (save_pretrained) as DIR/<variant>, for the other benchmarks")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="folder of the table (default: <run folder>/eval)")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    trained = lsgm.load(arguments.checkpoint)
    if trained.kind != "lsgm":
        parser.error(f"{arguments.checkpoint} is a {trained.kind} checkpoint; this ablation needs an LSGM (a VAE)")
    data = load_dataset(trained.config.data.name, trained.config.data.root, split="train",
                        val_fraction=trained.config.data.val_fraction)
    classifier = load_digits_classifier()
    conditional = trained.condition is not None
    rows = reference_rows(trained, classifier, data.x, data.y if conditional else None, arguments.guidance,
                          arguments.per_class, arguments.seed)
    for name, row in rows.items():
        print(name, row, flush=True)
    for parameterisation, sde_name, scheme in arguments.variants:
        torch.manual_seed(arguments.seed)
        model = fresh_prior(trained, parameterisation, sde_name, arguments.set)
        start = time.perf_counter()
        train_prior(model, data.x, data.y, scheme, arguments.steps, arguments.lr, model.config.sde.t_eps,
                    torch.Generator().manual_seed(arguments.seed), arguments.ema, arguments.target)
        name = f"{parameterisation}:{sde_name}:{scheme}"
        if arguments.save is not None:
            save_pretrained(model, arguments.save / name.replace(":", "-"))
        seconds = time.perf_counter() - start
        rows[name] = {**measure_samples(model, classifier, arguments.guidance, arguments.per_class, arguments.seed),
                      "learned": learned_share(model, data.x, model.config.sde.t_eps, arguments.seed),
                      "seconds": seconds}
        print(name, rows[name], flush=True)
    out = arguments.out or arguments.checkpoint.resolve().parent.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    weights = f"EMA {arguments.ema:g}" if arguments.ema else "raw weights"
    table = (f"{arguments.checkpoint}: the VAE frozen, a fresh score model per row, {arguments.steps} steps at lr "
             f"{arguments.lr:g}, target {arguments.target}, {weights}, seed {arguments.seed}\n\n"
             + markdown(rows, arguments.guidance, conditional) + "\n")
    (out / "score_prior_ablation.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
