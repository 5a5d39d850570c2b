"""Shared test set-up.

Without a GPU, Triton kernels can only run under its interpreter; the variable must be set before
triton is first imported, so it is set here for the whole test session (tests that compile for a
GPU target run in a subprocess with the interpreter off).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
