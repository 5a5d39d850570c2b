"""Direct per-row solves of the reconstruction (``dsnot_kernels.weights.reconstruct``): exact in float64.

Each row ``i`` has its own kept set K (size ``m_i``) and solves ``M'_KK ŵ_K = (w M')_K`` with M'
the damped second moment. Two direct forms, both batched over chunks of rows:

* ``kept_block``: gather ``M'_KK`` per row (padded to the largest ``m`` with the identity) and
  solve it by Cholesky: about ``m³`` flop-equivalents per row (a batched Cholesky of small
  matrices runs at about a third of a matrix product's speed).
* ``low_rank``: when M has a low rank r (fewer calibration tokens than columns), ``M ≈ F Fᵀ``
  (pivoted Cholesky, F (cols, r)) and ``M' = F Fᵀ + diag(s)``, s > 0 the dampening. With
  y = w - ŵ (``y_P = w_P``), ``y_K = -s_K⁻¹ F_K (I + F_Kᵀ s_K⁻¹ F_K)⁻¹ F_Pᵀ w_P`` (Woodbury): an
  r x r system per row, about ``2 m r² + r³`` per row.

The caller (``reconstruct``) polishes the result with its conjugate gradient on the exact M' and
its stopping rule, so an approximate factor can cost iterations, never accuracy.

Threads: ``reconstruct`` runs these solves on one intra-op thread (``one_thread``, the caller's
count restored afterwards): they are many small LAPACK calls, gathers and batched products, which
two threads of a loaded 2-core machine ran 2-10x slower than one (a batch of 256 Cholesky
factorisations of 288 x 288: 4.4 s against 0.47 s; benchmarks/RESULTS.md, "Reconstruction: direct
solves"); on an idle machine two threads gained at most 1.5x on them. Triangular solves replace
``cholesky_solve`` (one right-hand side per matrix: 3x faster here).
"""
from __future__ import annotations

import contextlib

import torch

CHUNK_BYTES = 1 << 26          # float64 working set of one chunk of rows (64 MiB)
LOW_RANK_TOL = 1e-6            # F is accepted once every residual diagonal is <= this x min(shift)


def kept_order(keep: torch.Tensor):
    """(order (rows, m) int64: each row's kept columns ascending, then padding; valid (rows, m) bool;
    m = the largest kept count)."""
    k = keep.sum(1)
    m = int(k.max()) if keep.numel() else 0
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :m]
    valid = torch.arange(m, device=keep.device).unsqueeze(0) < k.unsqueeze(1)
    return order, valid, m


def low_rank_factor(M: torch.Tensor, shift: torch.Tensor, r_max: int):
    """F (cols, r) float64 with ``M - F Fᵀ`` PSD and its largest diagonal entry <= LOW_RANK_TOL x
    min(shift), by pivoted Cholesky; None when that needs more than ``r_max`` columns or shift has
    a zero (no dampening: the Woodbury form needs s > 0)."""
    cols = M.shape[0]
    s_min = float(shift.min()) if shift.numel() else 0.0
    if s_min <= 0 or r_max < 1:
        return None
    limit = LOW_RANK_TOL * s_min
    d = torch.diagonal(M).clone().clamp_(min=0)
    F = torch.zeros(cols, r_max, dtype=M.dtype, device=M.device)
    for k in range(r_max + 1):
        p = int(torch.argmax(d))
        if float(d[p]) <= limit:
            return F[:, :k]
        if k == r_max:
            return None
        col = (M[:, p] - F[:, :k] @ F[p, :k]) / d[p].sqrt()
        F[:, k] = col
        d -= col * col
        d[p] = 0
        d.clamp_(min=0)
    return None


@contextlib.contextmanager
def one_thread():
    """Run the block on one torch intra-op thread, then restore the caller's count (also on error)."""
    prev = torch.get_num_threads()
    if prev == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _cholesky_solve(A, rhs):
    """(x (n, m), info (n,) int): A x = rhs for a batch of SPD (n, m, m) A and (n, m) rhs; info != 0
    where A is not positive definite (x undefined there)."""
    with one_thread():
        L, info = torch.linalg.cholesky_ex(A)
        y = torch.linalg.solve_triangular(L, rhs.unsqueeze(2), upper=False)
        x = torch.linalg.solve_triangular(L.transpose(1, 2), y, upper=True)
    return x.squeeze(2), info


def _chunks(n_rows, per_row_bytes):
    step = max(1, CHUNK_BYTES // max(1, per_row_bytes))
    return [(s, min(n_rows, s + step)) for s in range(0, n_rows, step)]


def solve_kept_block(w, Md, order, valid, rows_idx):
    """(x (n, cols) float64, ok (n,) bool): ŵ of rows ``rows_idx`` by a Cholesky of each M'_KK;
    rows whose block is not positive definite get ok False (x undefined there)."""
    n, m = rows_idx.numel(), order.shape[1]
    cols = w.shape[1]
    x = torch.zeros(n, cols, dtype=w.dtype, device=w.device)
    ok = torch.zeros(n, dtype=torch.bool, device=w.device)
    eye = torch.eye(m, dtype=w.dtype, device=w.device)
    for s, e in _chunks(n, 8 * m * (m + cols)):
        rid = rows_idx[s:e]
        idx, v = order[rid], valid[rid]
        full = bool(v.all())                             # every row keeps m: no padding
        with one_thread():                               # memory-bound gather (see above)
            A = Md[idx.unsqueeze(2), idx.unsqueeze(1)]
            if not full:
                A = torch.where(v.unsqueeze(2) & v.unsqueeze(1), A, eye)
        b = w[rid] @ Md
        rhs = torch.gather(b, 1, idx)
        if not full:
            rhs = torch.where(v, rhs, torch.zeros((), dtype=w.dtype, device=w.device))
        sol, info = _cholesky_solve(A, rhs)
        good = info == 0
        sol = torch.where(v & good.unsqueeze(1), sol, torch.zeros((), dtype=w.dtype, device=w.device))
        x[s:e].scatter_(1, idx, sol)
        ok[s:e] = good
    return x, ok


def solve_low_rank(w, keep, F, shift, order, valid, rows_idx):
    """(x (n, cols) float64, ok (n,) bool): ŵ of rows ``rows_idx`` for M' = F Fᵀ + diag(shift) by
    the Woodbury form above (I + G is >= I: always positive definite)."""
    n, m = rows_idx.numel(), order.shape[1]
    cols, r = w.shape[1], F.shape[1]
    x = torch.zeros(n, cols, dtype=w.dtype, device=w.device)
    inv_s = 1.0 / shift
    Fs = F * inv_s.sqrt().unsqueeze(1)                   # s^-1/2 F
    eye = torch.eye(r, dtype=w.dtype, device=w.device)
    for s, e in _chunks(n, 8 * (m * r + r * r + cols)):
        rid = rows_idx[s:e]
        idx, v = order[rid], valid[rid]
        wr = w[rid]
        u = (wr * (~keep[rid])) @ F                      # F_Pᵀ w_P   (n, r)
        with one_thread():
            Fk = Fs[idx] * v.unsqueeze(2)                # s_K^-1/2 F_K, 0 on padding  (n, m, r)
        G = eye + Fk.transpose(1, 2) @ Fk
        vv, _ = _cholesky_solve(G, u)                    # (n, r); G >= I: always factored
        y = (Fk @ vv.unsqueeze(2)).squeeze(2) * inv_s.sqrt()[idx]   # s_K^-1 F_K v  (n, m)
        sol = torch.where(v, torch.gather(wr, 1, idx) + y, torch.zeros((), dtype=w.dtype, device=w.device))
        x[s:e].scatter_(1, idx, sol)
    return x, torch.ones(n, dtype=torch.bool, device=w.device)
