"""Where lsgm finds the files it ships beside its code."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The hydra config folder (the one holding config.yaml): an installed package's copy, lsgm/configs (pyproject
    installs the clone's top-level configs/ there), or else, in a clone or an editable install, the clone's
    configs/."""
    for folder in (PACKAGE / "configs", PACKAGE.parent / "configs"):
        if (folder / "config.yaml").is_file():
            return folder
    raise FileNotFoundError(f"no lsgm configs in {PACKAGE / 'configs'} nor {PACKAGE.parent / 'configs'}; reinstall "
                            "lsgm (pip install .) or run from its clone")
