"""`python -m lsgm.sample ckpt=PATH num_samples=N sampler=ode|sde|ddpm|ddim|heun|dpm2m|pc out=FILE.npz`

Draws samples from a trained model (EMA weights) and writes them as `.npz` — first array `samples`,
N×C×H×W integers in 0..levels−1, then `levels` — with a PNG grid beside it; prints the NFE.
Sampler options default to configs/sampler/<name>.yaml and are overridden by `options.<key>=value`.
A class-conditional model takes `condition.class=3 guidance=2.0` (classifier-free guidance scale;
0 is the unconditional model, 1 the conditional one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .build import load
from .cli import run, sampler_defaults
from .data import to_levels
from .distributed import resolve_device
from .images import save_image_grid, upscale_factor

DEFAULTS = {
    "ckpt": "???",
    "num_samples": 64,
    "sampler": "ode",
    "options": {},
    "temperature": 1.0,
    "batch_size": 256,
    "seed": 0,
    "device": "auto",
    "out": "samples.npz",
    "condition": {"class": None},
    "guidance": 1.0,
}


def draw(model, num_samples: int, sampler: str, options: dict, temperature: float = 1.0, batch_size: int = 256,
         seed: int = 0, y: torch.Tensor | None = None, guidance: float = 1.0) -> tuple[torch.Tensor, int]:
    """`num_samples` images in [−1, 1] in batches, reproducible from `seed` (the sampler's noise and the decoder's,
    which uses the global generator, seeded here and restored after), conditioned on labels y (N,) if given;
    returns (images, NFE of one batch)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    images, nfe = [], 0
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, num_samples, batch_size):
            count = min(batch_size, num_samples - start)
            labels = None if y is None else y[start:start + count]
            batch, nfe = model.sample(count, sampler=sampler, temperature=temperature, generator=generator, y=labels,
                                      guidance=guidance, **options)
            images.append(batch.cpu())
    return torch.cat(images), nfe


def write_samples(images: torch.Tensor, levels: int, out: str | Path) -> tuple[Path, Path]:
    """The .npz (integers in 0..levels−1; floats for continuous data, levels=None) and a PNG grid beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if levels is None:
        np.savez_compressed(out, samples=images.numpy())
    else:
        integers = to_levels(images, levels).numpy().astype(np.uint8 if levels <= 256 else np.int32)
        np.savez_compressed(out, samples=integers, levels=np.array(levels))
    png = out.with_suffix(".png")
    save_image_grid(images[:256], png, scale=upscale_factor(*images.shape[-2:]))
    return out, png


def main(cfg) -> None:
    device = resolve_device(cfg.device)
    model = load(cfg.ckpt, device)
    options = {**sampler_defaults(cfg.sampler), **cfg.options}
    label = cfg.condition["class"]
    y = None if label is None else torch.full((cfg.num_samples,), int(label), dtype=torch.long)
    images, nfe = draw(model, cfg.num_samples, cfg.sampler, options, cfg.temperature, cfg.batch_size, cfg.seed,
                       y, cfg.guidance)
    npz, png = write_samples(images, model.levels, cfg.out)
    print(f"{cfg.num_samples} samples with {cfg.sampler} ({nfe} network evaluations per batch): {npz}, grid {png}")


if __name__ == "__main__":
    run(main, DEFAULTS, "lsgm.sample")
