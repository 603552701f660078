"""Run logging: a local ``metrics.jsonl`` always, and wandb when enabled.

A run folder receives:

- ``metrics.jsonl``: one JSON object per :meth:`RunLogger.log` call, ``{"step", "time" (Unix
  seconds), "elapsed" (seconds since the logger started), <scalar name>: <number>, ...}``, appended
  (a resumed run continues the file); non-finite numbers are written as Python's json writes them
  (NaN, Infinity);
- ``samples/<name>_<step>.png``: image grids from :meth:`RunLogger.log_images`;
- ``tables/<name>.csv`` and ``summary.json``: from :meth:`RunLogger.log_table` and
  :meth:`RunLogger.summary`;
- ``wandb/offline-run-*`` (mode ``offline``, the default) or ``wandb/run-*`` (``online``).

``mode="disabled"`` runs wandb's no-op run (no files); ``mode="none"`` never imports wandb.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from lsgm.images import save_image_grid, upscale_factor

MODES = ("offline", "online", "disabled", "none")
RESERVED_KEYS = ("step", "time", "elapsed")


class RunLogger:
    """Logs scalars, images, tables and a summary of one run to its folder and, unless
    ``mode="none"``, to a wandb run of its own (safe with several runs in one process, e.g. a hydra
    multirun, provided each is finished before the next starts or they are used independently).

    ``project``, ``name``, ``group``, ``tags``, ``notes``, ``entity``, ``job_type`` and ``config`` (the
    resolved config as a plain dict) go to ``wandb.init``. ``run_id`` continues that wandb run (a resumed
    training run passes the id its checkpoint stored: one history, not two). ``system_metrics`` keeps wandb's
    CPU/GPU monitor. ``val/bpd`` is summarised by its minimum. Use as a context manager, or call :meth:`finish`.
    """

    def __init__(
        self,
        run_dir: str | Path,
        mode: str = "offline",
        project: str = "lsgm",
        name: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        notes: str | None = None,
        entity: str | None = None,
        config: Mapping | None = None,
        system_metrics: bool = False,
        job_type: str | None = None,
        run_id: str | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"unknown logger mode {mode!r}; expected one of {', '.join(MODES)}")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self._start = time.time()
        self._metrics = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._wandb = None
        self.wandb_run = None
        if mode != "none":
            import wandb

            self._wandb = wandb
            self.wandb_run = wandb.init(
                dir=str(self.run_dir), mode=mode, project=project, name=name, group=group,
                tags=list(tags) or None, notes=notes, entity=entity, config=dict(config or {}),
                job_type=job_type, id=run_id, resume="allow" if run_id else None,
                reinit="create_new", settings=_quiet_settings(wandb, system_metrics),
            )
            self.wandb_run.define_metric("val/bpd", summary="min")

    def log(self, scalars: Mapping[str, object], step: int) -> None:
        """Append ``scalars`` (numbers, numpy scalars or one-element tensors) at ``step`` to
        metrics.jsonl, and to wandb."""
        values = {name: _number(name, value) for name, value in scalars.items()}
        clashes = set(values) & set(RESERVED_KEYS)
        if clashes:
            raise ValueError(f"scalar names {sorted(clashes)} are reserved for metrics.jsonl's own columns")
        now = time.time()
        record = {"step": int(step), "time": round(now, 3), "elapsed": round(now - self._start, 3), **values}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=int(step))

    def log_images(
        self, name: str, images: torch.Tensor | str | Path, step: int, nrow: int | None = None
    ) -> Path:
        """Save images (B, C, H, W) in [-1, 1] as a PNG grid ``samples/<name>_<step>.png`` (tiny
        images upscaled to about 64 pixels), or take an existing PNG path as is; log it to wandb
        as ``wandb.Image``; return the PNG's path."""
        if isinstance(images, (str, Path)):
            path = Path(images)
            if not path.is_file():
                raise FileNotFoundError(f"log_images: no image at {path}")
        else:
            path = self.run_dir / "samples" / f"{_file_stem(name)}_{int(step):07d}.png"
            save_image_grid(images, path, nrow=nrow, scale=upscale_factor(images.shape[-2], images.shape[-1]))
        if self.wandb_run is not None:
            self.wandb_run.log({name: self._wandb.Image(str(path))}, step=int(step))
        return path

    def log_table(self, name: str, columns: Sequence[str], rows: Iterable[Sequence[object]],
                  step: int | None = None) -> Path:
        """Write a table as ``tables/<name>.csv`` and log it to wandb as ``wandb.Table`` at ``step``
        (None: wandb's next step, which later ``log(..., step)`` calls must not go below); return the
        CSV's path."""
        rows = [list(row) for row in rows]
        path = self.run_dir / "tables" / f"{_file_stem(name)}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(columns)
            writer.writerows(rows)
        if self.wandb_run is not None:
            self.wandb_run.log({name: self._wandb.Table(columns=list(columns), data=rows)}, step=step)
        return path

    def summary(self, metrics: Mapping[str, object]) -> None:
        """Record final metrics (numbers or strings): merged into ``summary.json`` and the wandb
        run's summary."""
        values = {name: value if isinstance(value, str) else _number(name, value)
                  for name, value in metrics.items()}
        path = self.run_dir / "summary.json"
        merged = {**(json.loads(path.read_text()) if path.exists() else {}), **values}
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(merged, indent=2) + "\n")
        os.replace(temporary, path)
        if self.wandb_run is not None:
            self.wandb_run.summary.update(values)

    @property
    def run_id(self) -> str | None:
        """The wandb run's id (None without wandb)."""
        return self.wandb_run.id if self.wandb_run is not None else None

    def log_artifact(self, path: str | Path, name: str, kind: str = "model") -> None:
        """A file as a wandb reference artifact (its path and checksum, not a copy: works offline too)."""
        if self.wandb_run is None:
            return
        artifact = self._wandb.Artifact(_file_stem(name), type=kind)
        artifact.add_reference(Path(path).resolve().as_uri())
        self.wandb_run.log_artifact(artifact)

    def finish(self) -> None:
        """Close metrics.jsonl and finish the wandb run; calling it again does nothing."""
        if not self._metrics.closed:
            self._metrics.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exception) -> None:
        self.finish()


def drop_records_after(path: str | Path, step: int) -> None:
    """Remove the records of steps after `step` from a metrics.jsonl (those a crashed run wrote after its last
    checkpoint, which its resumed run writes again), rewriting the file atomically; no file: nothing to do."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if _record_step(line) <= step]
    if len(kept) == len(lines):
        return
    temporary = path.with_suffix(".jsonl.tmp")
    temporary.write_text("".join(kept), encoding="utf-8")
    os.replace(temporary, path)


def _record_step(line: str) -> float:
    """A metrics.jsonl line's step (a torn last line counts as past every step)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def _quiet_settings(wandb, system_metrics: bool):
    """wandb settings without console capture, banners, git/code snapshots or (by default) the
    system monitor."""
    return wandb.Settings(
        console="off", silent=True, disable_git=True, disable_code=True, save_code=False,
        x_disable_stats=not system_metrics, x_disable_machine_info=not system_metrics,
    )


def _number(name: str, value: object) -> int | float:
    """A Python int or float from a number, numpy scalar or one-element tensor/array (bools become 0/1)."""
    if hasattr(value, "item"):
        try:
            value = value.item()
        except (RuntimeError, ValueError):
            raise TypeError(f"{name}: expected a single number, got an array of shape "
                            f"{tuple(value.shape)}") from None
    if not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    return int(value) if isinstance(value, bool) else value


def _file_stem(name: str) -> str:
    """A metric name as a file name: characters other than letters, digits, '-', '_' and '.' become '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)
