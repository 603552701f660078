"""Progress bars that suit a terminal and a log file alike."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(enabled: bool = True, **options) -> tqdm:
    """A tqdm bar on stderr (`options`: tqdm's, e.g. total, desc, unit), redrawn every 0.1 s on a terminal and at
    most every 30 s otherwise, so that a SLURM log gets a line per 30 s rather than one per refresh (the training
    bar's rule); `enabled=False` gives a bar that prints nothing."""
    return tqdm(disable=not enabled, dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0, **options)
