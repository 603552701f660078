"""Fixtures every test package shares."""

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextmanager
def benchmark_module(name: str):
    """benchmarks/<name>.py imported as the module `name`, registered in sys.modules while the block runs (a dataclass
    in it looks its module up there); afterwards unregistered, and benchmarks/ off sys.path again if the script put
    it there to import its siblings."""
    on_path = str(BENCHMARKS) in sys.path
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        if not on_path and str(BENCHMARKS) in sys.path:
            sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test runs on one intra-op thread: tiny models and exact Gaussian ε's gain nothing from more, and on a
    shared 2-core machine OpenMP threads that wait on each other make the suite several times slower. The setting
    is restored after the session."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
