"""SparseGPT as published (``dk.sparsegpt``) against a plain transcription of the paper's Algorithm 1,
and ``initial="sparsegpt"`` in the driver, the torch.ao sparsifier and the CLI."""
import copy

import pytest
import torch
from torch import nn

import dsnot_kernels as dk
from dsnot_kernels.pruning import find_blocks, find_sublayers, weight_view


def _layer(rows, cols, tokens=200, seed=0, dead=()):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, cols, generator=g) * (0.2 + torch.rand(cols, generator=g) * 2)
    X = X + 0.5 * torch.randn(tokens, 1, generator=g) * torch.randn(cols, generator=g)  # correlated channels
    for j in dead:
        X[:, j] = 0
    st = dk.CalibrationStats(cols, hessian=True)
    st.add_batch(X.view(4, tokens // 4, cols))
    W = torch.randn(rows, cols, generator=g)
    return W, st.hessian, X


def _plain_cholesky_upper(A):
    """U with A = Uᵀ U, element by element (float64)."""
    n = len(A)
    U = [[0.0] * n for _ in range(n)]
    for i in range(n):
        s = A[i][i] - sum(U[k][i] ** 2 for k in range(i))
        U[i][i] = s ** 0.5
        for j in range(i + 1, n):
            U[i][j] = (A[i][j] - sum(U[k][i] * U[k][j] for k in range(i))) / U[i][i]
    return U


def plain_sparsegpt(W, H, sparsity=0.5, prune_n=0, prune_m=0, blocksize=128, percdamp=0.01):
    """Algorithm 1 of Frantar & Alistarh (2023), loop by loop, in float64 Python floats.

    Mask selection: unstructured, at the start of each block, the int(rows * B * p) smallest
    w² / [H⁻¹]²_cc of the block (ties by position); N:M, at each M-group, the N smallest per row."""
    rows, cols = W.shape
    W = W.double().tolist()
    H = H.double().clone()
    for j in range(cols):
        if H[j, j] == 0:  # dead input: H_jj = 1, W[:, j] = 0
            H[j, j] = 1
            for r in range(rows):
                W[r][j] = 0.0
    damp = percdamp * float(torch.diagonal(H).mean())
    for j in range(cols):
        H[j, j] += damp
    U = _plain_cholesky_upper(torch.linalg.inv(H).tolist())          # Cholesky(H⁻¹)ᵀ
    mask = [[False] * cols for _ in range(rows)]
    for i in range(0, cols, blocksize):
        end = min(i + blocksize, cols)
        E = [[0.0] * (end - i) for _ in range(rows)]
        if not prune_n:
            sal = sorted((W[r][c] ** 2 / U[c][c] ** 2, (r, c - i)) for r in range(rows) for c in range(i, end))
            # ties by position: row-major over the (rows, block) slab
            sal = sorted(sal, key=lambda t: (t[0], t[1][0] * (end - i) + t[1][1]))
            for _, (r, c) in sal[:int(rows * (end - i) * sparsity)]:
                mask[r][i + c] = True
        for j in range(i, end):
            if prune_n and (j - i) % prune_m == 0:
                for r in range(rows):
                    group = sorted(range(j, j + prune_m), key=lambda c: (W[r][c] ** 2 / U[c][c] ** 2, c))
                    for c in group[:prune_n]:
                        mask[r][c] = True
            for r in range(rows):
                e = W[r][j] / U[j][j] if mask[r][j] else 0.0
                E[r][j - i] = e
                for c in range(j, end):
                    W[r][c] -= e * U[j][c]
        for r in range(rows):                                       # lazy batch update
            for c in range(end, cols):
                W[r][c] -= sum(E[r][k - i] * U[k][c] for k in range(i, end))
    out = torch.tensor(W, dtype=torch.float64)
    m = torch.tensor(mask)
    out[m] = 0
    return m, out


CASES = [dict(rows=6, cols=24, sparsity=0.5, blocksize=8), dict(rows=5, cols=30, sparsity=0.7, blocksize=7),
         dict(rows=4, cols=24, prune_n=2, prune_m=4, blocksize=8),
         dict(rows=3, cols=32, prune_n=4, prune_m=8, blocksize=16),
         dict(rows=7, cols=20, sparsity=0.6, blocksize=128, dead=(3, 11))]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_equals_plain_transcription(case):
    case = dict(case)
    rows, cols, dead = case.pop("rows"), case.pop("cols"), case.pop("dead", ())
    W, H, _ = _layer(rows, cols, seed=rows * cols, dead=dead)
    mask, new_w = dk.sparsegpt(W, H, **case)
    ref_mask, ref_w = plain_sparsegpt(W, H, **case)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(new_w.double(), ref_w, rtol=2e-4, atol=2e-5)
    assert bool((new_w[mask] == 0).all())
    for j in dead:
        assert bool((new_w[:, j] == 0).all())


def test_counts_and_nm_validity():
    W, H, _ = _layer(16, 64, seed=3)
    mask, new_w = dk.sparsegpt(W, H, sparsity=0.6, blocksize=16)
    for i in range(0, 64, 16):
        assert int(mask[:, i:i + 16].sum()) == int(16 * 16 * 0.6)
    assert mask.sum(1).unique().numel() > 1  # adaptive: rows get different counts
    mask, new_w = dk.sparsegpt(W, H, prune_n=2, prune_m=4, blocksize=16)
    assert dk.nm_violations(mask, n=2, m=4) == [] and dk.nm_violations(new_w, n=2, m=4) == []


def _err(W, new_w, X):
    return float(((X.double() @ (W.double() - new_w.double()).t()) ** 2).sum())


@pytest.mark.parametrize("kw", [dict(sparsity=0.5), dict(sparsity=0.7), dict(prune_n=2, prune_m=4)])
def test_weight_update_beats_zeroing_the_same_mask(kw):
    W, H, X = _layer(32, 64, tokens=400, seed=5)
    mask, new_w = dk.sparsegpt(W, H, blocksize=16, **kw)
    assert _err(W, new_w, X) < 0.97 * _err(W, W.masked_fill(mask, 0), X)


def test_dtypes_and_inputs_untouched():
    W, H, _ = _layer(8, 32, seed=7)
    Wb, Hc, Wc = W.to(torch.bfloat16), H.clone(), W.clone()
    mask, new_w = dk.sparsegpt(Wb, H)
    assert new_w.dtype == torch.bfloat16 and mask.dtype == torch.bool and mask.shape == W.shape
    dk.sparsegpt(W, H)
    assert torch.equal(H, Hc) and torch.equal(W, Wc)


def test_singular_hessian_never_nan():
    # fewer tokens than columns (rank 8 of 32), and an all-dead layer
    W, H, _ = _layer(8, 32, tokens=8, seed=9)
    mask, new_w = dk.sparsegpt(W, H, sparsity=0.5)
    assert bool(torch.isfinite(new_w).all()) and bool((new_w[mask] == 0).all())
    mask, new_w = dk.sparsegpt(W, torch.zeros(32, 32), sparsity=0.5)
    assert bool(torch.isfinite(new_w).all()) and bool((new_w == 0).all())  # dead inputs: W[:, j] = 0
    with pytest.raises(ValueError, match="positive definite|percdamp"):
        dk.sparsegpt(W, H, sparsity=0.5, percdamp=0.0)  # singular without dampening: a clear error


def test_bad_inputs():
    W, H, _ = _layer(4, 16)
    with pytest.raises(ValueError, match="hessian must be"):
        dk.sparsegpt(W, H[:8, :8])
    with pytest.raises(ValueError, match="2-D"):
        dk.sparsegpt(W[0], H)
    with pytest.raises(ValueError, match="sparsity"):
        dk.sparsegpt(W, H, sparsity=1.0)
    with pytest.raises(ValueError, match="divisible"):
        dk.sparsegpt(W[:, :15], H[:15, :15], prune_n=2, prune_m=4)
    with pytest.raises(ValueError, match="multiple of prune_m"):
        dk.sparsegpt(W, H, prune_n=2, prune_m=4, blocksize=6)
    with pytest.raises(ValueError, match="non-finite"):
        dk.sparsegpt(W.masked_fill(W > 1, float("nan")), H)
    with pytest.raises(ValueError, match="percdamp"):
        dk.sparsegpt(W, H, percdamp=-1)
    with pytest.raises(TypeError):
        dk.sparsegpt(W, H, blocksize=2.5)


# -- the driver ------------------------------------------------------------------------------------

def _own_block0_stats(model, calib):
    """CalibrationStats of block 0's sub-layers, gathered with our own hooks on the dense model."""
    _, blocks = find_blocks(model)
    subs = find_sublayers(blocks[0])
    own, handles = {}, []
    for name, m in subs.items():
        cols = weight_view(m).shape[1]

        def hook(module, inp, out, name=name, cols=cols):
            own.setdefault(name, dk.CalibrationStats(cols, hessian=True)).add_batch(
                inp[0].reshape(-1, calib.shape[1], cols))
        handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        for x in calib.split(4):
            model(input_ids=x)
    for h in handles:
        h.remove()
    return own


def test_driver_sparsegpt_zeroes_the_mask_and_updates_kept_weights():
    from pruning_models import calibration, tiny_model
    model, calib = tiny_model("llama"), calibration()
    dense = copy.deepcopy(model)
    own = _own_block0_stats(dense, calib)
    masks = {}
    report = dk.prune_model(model, calib, dk.PruneConfig(sparsity=0.6, initial="sparsegpt", refine=False,
                                                         progress=False, batch_size=4),
                            on_mask=lambda i, n, m: masks.__setitem__((i, n), m.clone()))
    _, blocks, = find_blocks(model)
    _, dense_blocks = find_blocks(dense)
    for (i, name), mask in masks.items():
        W = weight_view(find_sublayers(blocks[i])[name])
        W0 = weight_view(find_sublayers(dense_blocks[i])[name])
        assert torch.equal(W == 0, mask), (i, name)                      # zero exactly on the mask
        assert float((W[~mask] != W0[~mask]).float().mean()) > 0.9      # kept weights updated
        if i == 0:  # block 0 sees the dense inputs: equal to dk.sparsegpt on our own statistics
            exp_mask, exp_w = dk.sparsegpt(W0, own[name].hessian, sparsity=0.6)
            assert torch.equal(mask, exp_mask), name
            torch.testing.assert_close(W, exp_w)
    assert all("sparsegpt_time_s" in e for e in report["sublayers"])


def test_driver_sparsegpt_then_refine_keeps_row_counts_and_reconstructs():
    from pruning_models import calibration, tiny_model
    model, calib = tiny_model("llama"), calibration()
    dense = copy.deepcopy(model)
    own = _own_block0_stats(dense, calib)
    masks = {}
    report = dk.prune_model(model, calib, dk.PruneConfig(sparsity=0.6, initial="sparsegpt", refine=True, skip="none",
                                                         objective="cov_window", window=5, progress=False,
                                                         batch_size=4, backend="torch"),
                            on_mask=lambda i, n, m: masks.__setitem__((i, n), m.clone()))
    _, blocks = find_blocks(model)
    for name, sub in find_sublayers(blocks[0]).items():
        W0 = weight_view(find_sublayers(find_blocks(dense)[1][0])[name])
        s = own[name]
        sg_mask, _ = dk.sparsegpt(W0, s.hessian, sparsity=0.6)
        refined = dk.refine_mask(W0, s.sum_metric_row, s.var, s.scaler_row, initial_mask=sg_mask,
                                 objective="cov_window", second_moment=s.hessian, window=5, backend="torch")
        assert torch.equal(masks[(0, name)], refined), name
        assert torch.equal(refined.sum(1), sg_mask.sum(1))               # each row keeps its count
        assert torch.equal(weight_view(sub) == 0, refined)
    assert sum(e["swaps"] for e in report["sublayers"]) > 0
    assert all(e["reconstruct"]["converged"] for e in report["sublayers"] if e["swaps"])


def test_sparsifier_sparsegpt_equals_functional_and_restarts_from_dense():
    from dsnot_kernels.integrations.torch_ao import DSnoTSparsifier
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48))
    dense = model[0].weight.detach().clone()
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(2, 8, 32, generator=g) for _ in range(3)]
    st = dk.CalibrationStats(32, hessian=True)
    for x in data:
        st.add_batch(x)
    sp = DSnoTSparsifier(sparsity_level=0.5, initial="sparsegpt", refine=False)
    sp.prepare(model, None)
    with torch.no_grad():
        for x in data:
            model(x)
    sp.step()
    sp.step()  # a second step starts again from the dense weights
    sp.squash_mask()
    exp_mask, exp_w = dk.sparsegpt(dense, st.hessian, sparsity=0.5)
    assert torch.equal(model[0].weight == 0, exp_mask)
    torch.testing.assert_close(model[0].weight.detach(), exp_w)


def test_cli_arguments():
    from dsnot_kernels.cli import build_parser
    args = build_parser().parse_args(["--initial", "sparsegpt_metric", "--reconstruct"])
    assert args.initial == "sparsegpt_metric" and args.reconstruct
    assert not build_parser().parse_args([]).reconstruct
    with pytest.raises(ValueError, match="initial"):
        dk.PruneConfig(initial="sparsegptx")
    with pytest.raises(TypeError, match="reconstruct"):
        dk.PruneConfig(reconstruct="yes")


# -- command lines -----------------------------------------------------------------------------------

from test_cli import ROOT, tiny_dir  # noqa: E402,F401  (the tiny Hugging Face model folder fixture)


def test_cli_sparsegpt_reconstruct_end_to_end(tiny_dir, tmp_path):  # noqa: F811
    import json
    from dsnot_kernels.cli import main
    out = tmp_path / "r.json"
    main(["--model", str(tiny_dir), "--nsamples", "3", "--seqlen", "32", "--eval-windows", "2", "--no-dense",
          "--no-refine", "--initial", "sparsegpt", "--reconstruct", "--json", str(out), "--quiet"])
    res = json.loads(out.read_text())
    assert res["rows"][-1]["method"] == "SparseGPT + reconstruct"
    report = res["reports"][-1]
    assert report["config"]["initial"] == "sparsegpt" and report["config"]["reconstruct"] is True
    assert all(e["reconstruct"]["converged"] for e in report["sublayers"])
    assert report["reconstruct_not_converged"] == []


@pytest.mark.parametrize("flags,initial,refine", [
    (["--prune_method", "DSnoT", "--initial_method", "sparsegpt"], "sparsegpt_metric", True),
    (["--prune_method", "sparsegpt"], "sparsegpt", False)])
def test_authors_main_sparsegpt_flags(tiny_dir, tmp_path, monkeypatch, flags, initial, refine):  # noqa: F811
    import runpy
    import sys
    seen = []
    real = dk.prune_model
    monkeypatch.setattr(dk, "prune_model", lambda model, calib, config: seen.append(config) or real(model, calib, config))
    monkeypatch.setattr(sys, "argv", ["main.py", "--model", str(tiny_dir), "--sparsity_ratio", "0.5", "--nsamples", "2",
                                      "--seqlen", "32", "--eval_windows", "1",
                                      "--output_results_file", str(tmp_path / "r.txt")] + flags)
    runpy.run_path(str(ROOT / "python" / "main.py"), run_name="__main__")
    assert len(seen) == 1 and seen[0].initial == initial and seen[0].refine == refine
