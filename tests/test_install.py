"""A fresh `pip install .` (not editable) of the clone's tracked files works from another folder: `lsgm-train`
trains the debug preset, `lsgm-sample` draws with dpm2m from the installed sampler configs, `lsgm-evaluate`
measures the checkpoint.

The new environment reuses this one's packages (torch and the rest; a .pth file names this environment's
site-packages) so nothing is downloaded; pip installs into the new environment only."""

import json
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def copy_tracked_files(destination: Path) -> None:
    """The clone as `git ls-files` has it (the working-tree versions of the tracked files)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())


def environment_on_top_of_this_one(folder: Path) -> Path:
    """A venv (no pip of its own) that sees this environment's packages after its own; returns its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         check=True, capture_output=True, text=True).stdout.strip()
    shared = [sysconfig.get_path("purelib"), *site.getsitepackages()]
    (Path(own) / "lsgm_test_parent_environment.pth").write_text("\n".join(dict.fromkeys(shared)) + "\n")
    return folder / "bin"


def run(command: list, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_a_fresh_install_trains_samples_and_evaluates_outside_the_clone(tmp_path):
    clone, elsewhere = tmp_path / "clone", tmp_path / "elsewhere"
    copy_tracked_files(clone)
    elsewhere.mkdir()
    bin_folder = environment_on_top_of_this_one(tmp_path / "venv")
    run([bin_folder / "python", "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-cache-dir", "."],
        clone)

    where = run([bin_folder / "python", "-c", "import lsgm; from lsgm.cli import sampler_defaults; "
                 "print(lsgm.__file__); print(lsgm.config_dir()); print(sampler_defaults('dpm2m'))"], elsewhere)
    package, configs, defaults = where.stdout.splitlines()
    assert Path(package).is_relative_to(tmp_path / "venv") and Path(configs) == Path(package).parent / "configs"
    assert defaults == "{'steps': 20}"

    run_dir = elsewhere / "run"
    run([bin_folder / "lsgm-train", "debug=default", "threads=1", f"hydra.run.dir={run_dir}"], elsewhere)
    checkpoint = run_dir / "checkpoints" / "best.pt"
    assert checkpoint.is_file() and (run_dir / "train_joint.log").is_file()

    sampled = run([bin_folder / "lsgm-sample", f"ckpt={checkpoint}", "sampler=dpm2m", "sampler.options.steps=4",
                   "num_samples=4", f"out={elsewhere / 'samples.npz'}"], elsewhere)
    assert (elsewhere / "samples.npz").is_file() and (elsewhere / "samples.png").is_file(), sampled.stdout

    run([bin_folder / "lsgm-evaluate", f"ckpt={checkpoint}", "tasks=[nll]", "max_images=8", "nll.k=1",
         "nll.rtol=1e-3", "nll.atol=1e-3", "logger=none", f"out={elsewhere / 'eval'}"], elsewhere)
    assert json.loads((elsewhere / "eval" / "nll.json").read_text())["nll_images"] == 8
