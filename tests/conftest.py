"""Fixtures every test package shares."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test runs on one intra-op thread: tiny models and exact Gaussian ε's gain nothing from more, and on a
    shared 2-core machine OpenMP threads that wait on each other make the suite several times slower. The setting
    is restored after the session."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
