"""PNG figures of the variational bound and of progressive coding (DDPM Fig. 5), and decompression grids.

Each figure function takes a `sde.vlb.RateDistortion` table (per evaluated step t: rate, distortion,
term) and a path, and writes a PNG of exactly width × height pixels with matplotlib's Agg canvas
(no pyplot, no global backend state).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure

from sde.vlb import RateDistortion

DPI = 100
CELL_PIXELS = 80  # a progressive grid's tile
LABEL_PIXELS = 24  # and its column labels' strip


def new_figure(width: int, height: int) -> Figure:
    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")


def save_figure(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI)
    return path


def plot_bound_terms(table: RateDistortion, path: str | Path, width: int = 800, height: int = 500) -> Path:
    """The step-t terms L_{t−1} (t ≥ 2, bits/dim, log scale) against t; L_0 and L_T in the title."""
    figure = new_figure(width, height)
    axes = figure.subplots()
    axes.plot(table.steps[1:].numpy(), table.term[1:].numpy(), marker="." if len(table.steps) < 100 else None)
    axes.set_yscale("log")
    axes.set_xlabel("step t")
    axes.set_ylabel("KL term L$_{t-1}$ (bits/dim)")
    prior = table.rate[-1].item()  # nothing lies above the last evaluated step: its rate is L_T
    axes.set_title(f"variational bound terms: L$_0$ = {table.term[0].item():.4g}, L$_T$ = {prior:.3g} bits/dim")
    axes.grid(True, which="both", alpha=0.3)
    return save_figure(figure, path)


def plot_rate_distortion(table: RateDistortion, path: str | Path, width: int = 1200, height: int = 400) -> Path:
    """DDPM Fig. 5: distortion and rate against reverse-process steps T − t + 1, and distortion against rate.
    Distortion is the RMSE of x̂_0 on the level scale 0..levels − 1."""
    reverse_steps = (table.T - table.steps + 1).numpy()
    figure = new_figure(width, height)
    by_steps, rate_by_steps, curve = figure.subplots(1, 3)
    by_steps.plot(reverse_steps, table.distortion.numpy())
    by_steps.set(xlabel="reverse process steps (T − t + 1)", ylabel="distortion (RMSE on 0..levels − 1)")
    rate_by_steps.plot(reverse_steps, table.rate.numpy())
    rate_by_steps.set(xlabel="reverse process steps (T − t + 1)", ylabel="rate (bits/dim)")
    curve.plot(table.rate.numpy(), table.distortion.numpy())
    curve.set(xlabel="rate (bits/dim)", ylabel="distortion (RMSE on 0..levels − 1)")
    for axes in (by_steps, rate_by_steps, curve):
        axes.grid(True, alpha=0.3)
    return save_figure(figure, path)


def save_progressive_grid(predictions: Sequence[torch.Tensor], path: str | Path,
                          labels: Sequence[str] | None = None, cell: int = CELL_PIXELS) -> Path:
    """Progressive decompression: predictions[j] is x̂_0 (B, C, H, W) in [−1, 1] at the j-th column, in coding
    order (the receiver's: t = T first, the original last); row b shows sample b. `labels` head the columns
    (e.g. "t = 1000", …, "original"). A PNG of cell × columns by cell × rows + LABEL_PIXELS pixels, each image
    drawn nearest-neighbour on a grey ground so that tiles stay apart."""
    if not predictions:
        raise ValueError("expected at least one tensor of predictions")
    if labels is not None and len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels for {len(predictions)} columns")
    stacked = torch.stack([p.detach().float().cpu() for p in predictions], 1)  # (B, columns, C, H, W)
    rows, columns = stacked.shape[:2]
    figure = new_figure(cell * columns, cell * rows + LABEL_PIXELS)
    figure.set_layout_engine(None)
    figure.set_facecolor("0.5")
    top = 1 - LABEL_PIXELS / (cell * rows + LABEL_PIXELS)
    grid = figure.add_gridspec(rows, columns, left=0, right=1, bottom=0, top=top, wspace=0.06, hspace=0.06)
    for row in range(rows):
        for column in range(columns):
            axes = figure.add_subplot(grid[row, column])
            image = ((stacked[row, column] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()
            axes.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1,
                        interpolation="nearest")
            axes.set_axis_off()
            if row == 0 and labels is not None:
                axes.set_title(labels[column], fontsize=9, pad=4)
    return save_figure(figure, path)
