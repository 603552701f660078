"""The package list, which pyproject.toml cannot compute: the code packages (sde, nvae, autoencoder, lsgm) and their
data folders, plus the top-level configs/ and its config groups as lsgm.configs.* (pyproject's package-dir maps
lsgm.configs to configs/). Everything else about the project is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

CODE = find_namespace_packages(include=["sde", "sde.*", "nvae", "nvae.*", "lsgm", "lsgm.*", "autoencoder",
                                        "autoencoder.*"])
CONFIGS = ["lsgm.configs", *(f"lsgm.configs.{group}" for group in find_namespace_packages("configs"))]

setup(packages=CODE + CONFIGS)
