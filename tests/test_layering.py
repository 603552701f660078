"""The direction of dependence: `sde`, `nvae` and `autoencoder` import neither `lsgm` nor each other (`lsgm` builds
on all three), checked on every import statement of their sources."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOUNDATIONS = ("sde", "nvae", "autoencoder")


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a source file imports (absolute imports only; relative ones stay inside)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", FOUNDATIONS)
def test_a_foundation_package_imports_no_other_project_package(package):
    forbidden = {"lsgm", *FOUNDATIONS} - {package}
    offenders = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & forbidden)
                 for path in (ROOT / package).rglob("*.py") if imported_packages(path) & forbidden}
    assert not offenders, f"{package} must not import {sorted(forbidden)}: {offenders}"
    assert any((ROOT / package).rglob("*.py"))


def test_the_check_sees_an_offending_import(tmp_path):
    source = tmp_path / "bad.py"
    source.write_text("import torch\nfrom lsgm.models import LDM\nfrom . import sibling\n")
    assert imported_packages(source) == {"torch", "lsgm"}
