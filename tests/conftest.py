"""Shared fixtures. Ray fixtures start a real local Ray bound to 127.0.0.1."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the whole test session (starting Ray costs ~5 s)."""
    from lathe.platform.runtime import ray_session

    with ray_session(num_cpus=4) as info:
        yield info


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from a second intra-op thread, and on a busy shared machine two
    spinning OpenMP threads make a test many times slower; restored after each test.
    Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_tokenizer():
    from lathe.data import qa
    from lathe.platform.zoo import train_tokenizer

    rows = qa.generate(64, seed=0)
    return train_tokenizer([r["question"] + " " + r["answer"] for r in rows], vocab_size=512)


@pytest.fixture
def tiny_model(tiny_tokenizer):
    from lathe.platform.zoo import build_tiny

    return build_tiny("tiny-1m", vocab_size=len(tiny_tokenizer), seed=0)


def pytest_sessionfinish(session, exitstatus):
    session.config._lathe_exitstatus = int(exitstatus)


def pytest_unconfigure(config):
    """End the process once pytest has printed its summary: open3d's Filament renderer (the XR scene
    tests) segfaults when the interpreter tears it down at exit, which turned a green run's exit code
    into a crash. os._exit keeps pytest's own exit status."""
    import sys

    code = getattr(config, "_lathe_exitstatus", None)
    if code is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
