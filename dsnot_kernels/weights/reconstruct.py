"""Exact weight reconstruction after any mask: each row's kept weights re-solved for the layer's inputs.

For a dense row ``w`` (1, cols), its pruned set P (the mask) and kept set K, and the inputs'
second moment M (cols, cols), the reconstructed row is

    ŵ = argmin (w - ŵ) M (w - ŵ)ᵀ  subject to ŵ_P = 0,   i.e.   M_KK ŵ_K = M_K: wᵀ,

the least-squares kept weights for the calibration outputs. Method: a batched preconditioned
conjugate gradient over all rows at once (the rows are independent systems that share M): each
iteration is one ``(active rows, cols) @ (cols, cols)`` product with M, masked to K, plus one with
the preconditioner; float64 throughout. Preconditioner ``"inverse"`` (default): ``(M⁻¹)_KK``, the
kept block of the dense inverse (one Cholesky per layer, shared by all rows; SPD on K; on this
project's model it cut the iterations 3-6x against Jacobi); ``"jacobi"``: ``1 / diag M`` (also the
fallback when M cannot be factored).

Direct solves (``method="auto"``, default; ``reconstruct_direct.py``): with few calibration
tokens M has a low rank and the systems are badly conditioned (26-73 iterations per sub-layer of
the embedded model at 4 x 64 tokens); then every row is solved directly at once (Woodbury form
on a pivoted-Cholesky factor of M, or a Cholesky of its kept block, whichever costs less).
Otherwise PCG runs as many iterations as a direct solve costs and finishes the rows still running
directly. Each directly solved row is then run through PCG again from that solution, so the
stopping rule below decides for every row. The direct solves run on one torch thread (see
``reconstruct_direct``: on a loaded machine two threads made them 2-10x slower).

Stopping rule, on the loss rather than the residual: each conjugate-gradient step lowers the row's
damped loss ``(w - ŵ) M' (w - ŵ)ᵀ`` by ``alpha (r·z)`` (exactly, in exact arithmetic), and what is
left to gain is the sum of the later steps, which shrink geometrically. A row stops once its last
two steps together lowered its loss by at most ``tol`` times the loss (default 1e-6). On the
embedded model's sub-layers the loss was then within ``tol`` of the exact minimum on every row
(benchmarks/RESULTS.md, "Reconstruction: cost and the stopping rule"); the former rule, a
relative residual of 1e-4, let rows with a small optimum stop up to 1.8 % above it.
``max_rel_residual`` is recomputed from ŵ at the end and reported.

Dampening (the same rule as SparseGPT): M' = M with dead channels (``M[j, j] == 0``) set to 1 on
the diagonal, plus ``percdamp * mean(diag M)`` on the diagonal; the systems solved are M'_KK.
Since M' = M + λI (λ >= 0) on the live channels, the damped loss is the undamped one plus
``λ |w - ŵ|²``. From the default start (``w`` with the mask zeroed) every ŵ has ``|w - ŵ| >=`` the
start's, so a drop of the damped loss implies a drop of the undamped loss. From another start
(``init``, e.g. SparseGPT's weights) the damped optimum can have a higher undamped loss (seen on
1 of 576 rows of one sub-layer of the embedded model at 70 %). Guard: any row whose undamped loss
after is higher than before, or non-finite, gets its starting weights back and is counted in
``rows_reverted``; only the non-finite ones also count as not converged. So the row loss never
rises. The mask never changes: ŵ is exactly 0 on it.
"""
from __future__ import annotations

import math
import warnings

import torch

from dsnot_kernels.weights.reconstruct_direct import (kept_order, low_rank_factor, one_thread, solve_kept_block,
                                              solve_low_rank)
from dsnot_kernels.weights.sparsegpt import damped_hessian

__all__ = ["reconstruct", "row_losses", "DEFAULT_TOL", "DEFAULT_MAX_ITER"]

DEFAULT_TOL = 1e-6        # per row: last two steps lowered the loss by <= tol x loss
DEFAULT_MAX_ITER = 300


def row_losses(weight: torch.Tensor, new_weight: torch.Tensor, second_moment: torch.Tensor) -> torch.Tensor:
    """(rows,) float64: ``(w - ŵ) M (w - ŵ)ᵀ`` per row (the undamped output error on the inputs)."""
    D = weight.double() - new_weight.double()
    return ((D @ second_moment.double()) * D).sum(1)


def _check(weight, mask, second_moment, init, tol, max_iter, percdamp):
    for name, t in (("weight", weight), ("mask", mask), ("second_moment", second_moment)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"reconstruct: {name} must be a torch.Tensor, got {type(t).__name__}")
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"reconstruct: weight must be a 2-D float tensor, got {tuple(weight.shape)} {weight.dtype}")
    rows, cols = weight.shape
    if tuple(mask.shape) != (rows, cols) or mask.dtype != torch.bool:
        raise ValueError(f"reconstruct: mask must be a ({rows}, {cols}) bool tensor (True = pruned), "
                         f"got {tuple(mask.shape)} {mask.dtype}")
    if tuple(second_moment.shape) != (cols, cols) or not second_moment.is_floating_point():
        raise ValueError(f"reconstruct: second_moment must be a ({cols}, {cols}) float tensor, "
                         f"got {tuple(second_moment.shape)} {second_moment.dtype}")
    if init is not None and (not isinstance(init, torch.Tensor) or tuple(init.shape) != (rows, cols)):
        raise ValueError(f"reconstruct: init must be a ({rows}, {cols}) tensor")
    for name, t in (("mask", mask), ("second_moment", second_moment), ("init", init)):
        if t is not None and t.device != weight.device:
            raise ValueError(f"reconstruct: {name} is on {t.device} but weight is on {weight.device}")
    for name, t in (("weight", weight), ("second_moment", second_moment), ("init", init)):
        if t is not None and not bool(torch.isfinite(t).all()):
            raise ValueError(f"reconstruct: {name} has non-finite values (NaN or inf)")
    if bool((torch.diagonal(second_moment) < 0).any()):
        raise ValueError("reconstruct: second_moment has negative diagonal entries; it must be E[x xᵀ] "
                         "(positive semi-definite) up to a positive scale")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0 < tol < 1):
        raise ValueError(f"reconstruct: tol must be a number in (0, 1), got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"reconstruct: max_iter must be an int >= 1, got {max_iter!r}")
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) \
            or not math.isfinite(percdamp) or percdamp < 0:
        raise ValueError(f"reconstruct: percdamp must be a finite number >= 0, got {percdamp!r}")


def _pcg(w, keep, M, Md, shift, x, rows, precondition, tol, max_iter):
    """Batched preconditioned conjugate gradient on the rows ``rows`` (int64 indices) of ``x``, from
    ``x[rows]``, updated in place. Returns (iterations, conv (n,) bool, last_rel (n,) float64)."""
    n = rows.numel()
    f64 = w.dtype
    conv = torch.zeros(n, dtype=torch.bool, device=w.device)
    last_rel = torch.zeros(n, dtype=f64, device=w.device)
    if n == 0 or max_iter < 1:
        return 0, conv, last_rel
    kp = keep[rows]
    xr = x[rows]
    D0 = w[rows] - xr
    G0 = D0 @ M
    r = (G0 + D0 * shift) * kp                          # keep * (w - x) M'
    # damped loss per row, lowered by alpha (r·z) at each step; rows with no residual are at the optimum
    loss = (G0 * D0).sum(1) + (D0 * D0 * shift).sum(1)
    floor = 1e-14 * loss                                 # rounding level of the starting loss
    rnorm = r.norm(dim=1)
    active = torch.nonzero(rnorm > 0).flatten()
    conv[rnorm == 0] = True
    z = precondition(r[active], rows[active])
    p = z.clone()
    rz = (r[active] * z).sum(1)
    prev = torch.full_like(rz, float("inf"))            # the previous step's decrease
    it = 0
    while active.numel() and it < max_iter:
        it += 1
        q = (p @ Md) * kp[active]
        pq = (p * q).sum(1)
        ok = pq > 0                                      # pq == 0: a zero direction (singular M_KK)
        alpha = torch.where(ok, rz / torch.where(ok, pq, torch.ones_like(pq)), torch.zeros_like(pq))
        xr[active] += alpha.unsqueeze(1) * p
        r_a = r[active] - alpha.unsqueeze(1) * q
        r[active] = r_a
        dec = alpha * rz
        l_a = loss[active] - dec
        loss[active] = l_a
        two = prev + dec
        z_a = precondition(r_a, rows[active])
        rz_new = (r_a * z_a).sum(1)
        exact = rz_new <= 0                              # r = 0: the row is at its optimum
        last_rel[active] = torch.where(exact, torch.zeros_like(two),
                                       two / torch.where(l_a > 0, l_a, torch.ones_like(l_a)))
        done = (two <= tol * l_a + floor[active]) | exact      # converged: the criterion, or r = 0
        conv[active[done & ok]] = True
        still = ~done & ok & torch.isfinite(rz_new) & torch.isfinite(l_a)
        if not bool(still.any()):
            active = active[:0]
            break
        keep_idx = torch.nonzero(still).flatten()
        active = active[keep_idx]
        z = z_a[keep_idx]
        rz_new = rz_new[keep_idx]
        beta = rz_new / rz[keep_idx]
        p = z + beta.unsqueeze(1) * p[keep_idx]
        rz = rz_new
        prev = dec[keep_idx]
    x[rows] = xr
    return it, conv, last_rel


def _direct_plan(M, shift, keep, cols, method):
    """Which direct form (``reconstruct_direct``) and after how many PCG iterations.

    Returns (form, factor, switch): form "kept_block" or "low_rank", F for low_rank, and the PCG
    iterations after which the rows still running are solved directly (0: at once; None: never).
    Cost per row in flop-equivalents: PCG 4 cols² per iteration (two products with a
    (cols, cols) matrix), kept_block m³ (m the largest kept count), low_rank 2 m r² + r³. When M
    has a low rank (r <= cols / 2: fewer calibration tokens than columns) the rows are solved
    directly at once, by the cheaper form: the conjugate gradient is slow there (the kept and the
    pruned columns are coupled through the few directions the calibration spans). Otherwise
    ``auto`` runs PCG for as many iterations as the direct solve costs, so that it costs at most
    about twice the cheaper of the two."""
    if method == "pcg":
        return None, None, None
    m = int(keep.sum(1).max())
    cost_k = float(m) ** 3
    F = low_rank_factor(M, shift, cols // 2) if m else None
    if F is not None and 2.0 * m * F.shape[1] ** 2 + F.shape[1] ** 3 < cost_k:
        return "low_rank", F, 0
    if method == "direct" or F is not None:
        return "kept_block", None, 0
    return "kept_block", None, max(1, math.ceil(cost_k / (4.0 * cols * cols)))


def reconstruct(weight: torch.Tensor, mask: torch.Tensor, second_moment: torch.Tensor, *,
                tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER, percdamp: float = 0.01,
                init: "torch.Tensor | None" = None, preconditioner: str = "inverse",
                method: str = "auto", return_info: bool = False, warn: bool = True):
    """Kept weights minimising each row's output error for a fixed mask.

    Args:
        weight: (rows, cols) the *dense* weights ``w`` (float32/float16/bfloat16/float64).
        mask: (rows, cols) bool, True = pruned; never changed.
        second_moment: (cols, cols) float, E[x xᵀ] of the inputs up to a positive scale
            (``CalibrationStats(hessian=True).hessian`` as it is).
        tol: a row has converged once its last two conjugate-gradient steps lowered its damped
            loss by at most ``tol`` times that loss, in (0, 1): its loss is then within about
            ``tol`` of the row's exact minimum.
        max_iter: conjugate-gradient iterations at most (per phase: before and after a direct solve).
        percdamp: dampening ``percdamp * mean(diag M)`` on the diagonal (dead channels: 1 first).
            0 solves the undamped systems (they may then be singular: a row that does not
            converge is reported, never NaN).
        init: (rows, cols) starting weights (e.g. SparseGPT's updated weights; their values on the
            mask are ignored); None = ``weight`` with the mask zeroed. The guard compares with it.
        preconditioner: "inverse" (``(M⁻¹)_KK``) or "jacobi" (``1 / diag M``).
        method: "auto" (default): conjugate gradient, and a direct per-row solve (Cholesky of the
            row's kept block, or the low-rank form when M has a low rank) for the rows it would
            take longer on; "pcg": conjugate gradient only; "direct": direct solve of every row.
            Every direct solution is then checked (polished) by the conjugate gradient with the
            same stopping rule.
        return_info: also return a dict: ``iterations``, ``max_rel_residual``, ``converged``,
            ``rows_not_converged``, ``rows_reverted``, ``rows_direct`` (rows solved directly),
            ``max_rel_decrease`` (the stopping quantity: the largest last-two-steps decrease over
            the loss among the rows), ``loss_before``/``loss_after`` (mean row
            loss, undamped), ``tol``, ``percdamp``, ``method``, ``time_s``.
        warn: warn (``RuntimeWarning``) when some rows did not converge.

    Returns:
        new_weight (rows, cols) in weight's dtype, exactly 0 on the mask; with ``return_info``,
        ``(new_weight, info)``.
    """
    import time
    t0 = time.perf_counter()
    _check(weight, mask, second_moment, init, tol, max_iter, percdamp)
    if preconditioner not in ("inverse", "jacobi"):
        raise ValueError(f'reconstruct: preconditioner must be "inverse" or "jacobi", got {preconditioner!r}')
    if method not in ("auto", "pcg", "direct"):
        raise ValueError(f'reconstruct: method must be "auto", "pcg" or "direct", got {method!r}')
    rows, cols = weight.shape
    f64 = torch.float64
    w = weight.detach().to(f64)
    keep = (~mask).to(f64)
    M = second_moment.detach().to(f64)
    M = (M + M.t()) * 0.5
    Md, _ = damped_hessian(M, percdamp, dtype=f64)
    x0 = (w if init is None else init.detach().to(f64)) * keep
    info = {"iterations": 0, "max_rel_residual": 0.0, "max_rel_decrease": 0.0, "converged": True,
            "rows_not_converged": 0, "rows_direct": 0,
            "rows_reverted": 0, "loss_before": 0.0, "loss_after": 0.0, "tol": float(tol),
            "max_iter": int(max_iter), "percdamp": float(percdamp), "method": f"pcg-{preconditioner}-float64"}
    if rows == 0 or cols == 0:
        out = x0.to(weight.dtype)
        info["time_s"] = time.perf_counter() - t0
        return (out, info) if return_info else out

    bnorm = ((w @ Md) * keep).norm(dim=1)                # |M'_K: w|
    # M' = M + diag(shift) (dead channels and dampening): one product with M gives both the
    # undamped loss and the damped residual  keep * (w - x) M'
    shift = torch.diagonal(Md) - torch.diagonal(M)
    D0 = w - x0
    before = ((D0 @ M) * D0).sum(1)
    inv_diag = 1.0 / torch.diagonal(Md)                  # > 0 after dampening / dead-channel fix
    Minv = None
    if preconditioner == "inverse":
        Lc, bad_factor = torch.linalg.cholesky_ex(Md)
        if int(bad_factor) == 0:
            # L⁻¹ by a triangular solve, then L⁻ᵀ L⁻¹: two BLAS-3 calls. ``cholesky_inverse``
            # took 8-11 s for 1536 columns on two threads of a loaded 2-core machine (0.4 s so)
            Li = torch.linalg.solve_triangular(Lc, torch.eye(cols, dtype=f64, device=w.device), upper=False)
            Minv = Li.t() @ Li
            Minv = (Minv + Minv.t()) * 0.5
        else:
            info["method"] = "pcg-jacobi-float64 (M not positive definite: no inverse preconditioner)"

    def precondition(res, rows_idx):
        if Minv is None:
            return res * inv_diag
        return (res @ Minv) * keep[rows_idx]

    x = x0.clone()
    all_rows = torch.arange(rows, device=w.device)
    form, F, switch = _direct_plan(M, shift, ~mask, cols, method)
    first = max_iter if switch is None else min(max_iter, switch)
    it, conv, last_rel = _pcg(w, keep, M, Md, shift, x, all_rows, precondition, tol, first)
    if switch is not None:
        todo = torch.nonzero(~conv).flatten()
        if todo.numel():
            order, valid, _ = kept_order(~mask)
            with one_thread():                           # many small products: see reconstruct_direct
                if form == "low_rank":
                    xd, ok = solve_low_rank(w, ~mask, F, shift, order, valid, todo)
                else:
                    xd, ok = solve_kept_block(w, Md, order, valid, todo)
            solved = todo[ok]
            x[solved] = xd[ok]
            it2, conv2, rel2 = _pcg(w, keep, M, Md, shift, x, todo, precondition, tol, max_iter)
            conv[todo], last_rel[todo] = conv2, rel2
            info["rows_direct"] = int(solved.numel())
            info["method"] += (f" + direct ({form.replace('_', ' ')}) for {int(solved.numel())} rows"
                               f" after {it} iterations")
            it += it2

    x = x * keep                                         # exactly 0 on the mask
    D1 = w - x
    G1 = D1 @ M
    after = (G1 * D1).sum(1)
    denom = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    rel = ((G1 + D1 * shift) * keep).norm(dim=1) / denom  # the true residual b - M'_KK x_K
    broken = ~torch.isfinite(after) | ~torch.isfinite(x).all(1)
    bad = broken | (after > before + 1e-12 * before.abs() + 1e-300)  # rose: the damped optimum (see above)
    if bool(bad.any()):
        x[bad] = x0[bad]
        after = torch.where(bad, before, after)
    rel = torch.where(torch.isfinite(rel), rel, torch.full_like(rel, float("inf")))
    conv = conv & ~broken
    not_conv = int((~conv).sum())
    info.update(iterations=it, max_rel_residual=float(rel.max()), converged=not_conv == 0,
                rows_not_converged=not_conv, rows_reverted=int(bad.sum()),
                max_rel_decrease=float(last_rel.max()),
                loss_before=float(before.mean()), loss_after=float(after.mean()))
    if not_conv and warn:
        warnings.warn(f"reconstruct: {not_conv} of {rows} rows did not converge (last two steps lowered the loss "
                      f"by more than {tol:g} of it) in {it} iterations (largest {info['max_rel_decrease']:.3g}); "
                      "their loss still did not rise", RuntimeWarning, stacklevel=2)
    out = x.to(weight.dtype)
    out[mask] = 0
    info["time_s"] = time.perf_counter() - t0
    return (out, info) if return_info else out
