"""Shared test set-up.

Without a GPU, Triton kernels can only run under its interpreter; the variable must be set before
triton is first imported, so it is set here for the whole test session (tests that compile for a
GPU target run in a subprocess with the interpreter off).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored after: tiny matrices run fastest so (and steadily on
    a loaded machine), and two code paths whose products have different shapes round the same only
    there (tests/test_integrations_llmcompressor_families.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
