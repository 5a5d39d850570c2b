"""Backend choice: argument, then DSNOT_KERNELS_BACKEND, then the best available."""
import pytest
import torch

import dsnot_kernels as dk


def _args():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 16, generator=g), torch.randn(16, generator=g), torch.rand(16, generator=g), torch.rand(16, generator=g)


def test_torch_backend_always_available():
    assert "torch" in dk.available_backends("cpu")


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="unknown backend"):
        dk.refine_mask(*_args(), backend="tpu")


def test_explicit_backend_that_cannot_serve_raises():
    with pytest.raises(RuntimeError, match="cuda"):
        dk.refine_mask(*_args(), backend="cuda")


def test_environment_variable_selects_backend(monkeypatch):
    monkeypatch.setenv("DSNOT_KERNELS_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda'"):
        dk.refine_mask(*_args())
    monkeypatch.setenv("DSNOT_KERNELS_BACKEND", "torch")
    assert dk.refine_mask(*_args()).shape == (4, 16)


def test_every_available_backend_gives_the_reference_mask():
    args = _args()
    want = dk.refine_mask(*args, backend="torch", sparsity=0.5, return_swaps=True)
    for name in dk.available_backends("cpu"):
        got = dk.refine_mask(*args, backend=name, sparsity=0.5, return_swaps=True)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), name


def test_empty_shapes():
    W = torch.zeros(0, 8)
    m = dk.refine_mask(W, torch.zeros(8), torch.ones(8), torch.ones(8))
    assert m.shape == (0, 8) and m.dtype == torch.bool


def test_objective_table_drives_the_choice():
    """Every objective's automatic choice is one of the backends its table row names, and a backend
    the row does not name is refused with the names of those that serve it."""
    from dsnot_kernels.ops import OBJECTIVES

    for objective, row in OBJECTIVES.items():
        names = dk.available_backends("cpu", objective=objective)
        assert "torch" in names and set(names) <= set(row.backends), objective
        for missing in set(dk.ops.BACKENDS) - set(row.backends):
            with pytest.raises(ValueError, match=f"objective={objective!r} is implemented by"):
                dk.ops._choose_backend(missing, torch.device("cpu"), objective)


def test_available_backends_unknown_objective():
    with pytest.raises(ValueError, match="objective must be one of"):
        dk.available_backends("cpu", objective="nope")
