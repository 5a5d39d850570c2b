"""Would a float32 pair search (objective 3, "cov_window") pick the float64 winner?

For the first cycle of every row of synthetic layers (correlated inputs, wanda initial mask), the
K x K window pairs of the direction ``sign(err)`` picks are scored as the contract's float64
``delta = (A_q - ((2 w_q) w_r) M_qr) + B_r`` and as the same operations in float32 (w, g, M
rounded to float32 first). Counted per row: the float32 first minimum differs from the float64
one; of those, how many the float64 check of the float32 winner would still accept (d64 < 0: a
silent deviation from the reference); and the rank of the float64 winner in the float32 order
(how many float32 candidates a float64 recheck must cover).

    OMP_NUM_THREADS=1 python benchmarks/experiments/float32_search.py [--rows 512] [--cols 2048 4096]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import dsnot_kernels as dk  # noqa: E402
from dsnot_kernels.objectives.reference import growth_keys, initial_selection, lane_sum, wanda_metric  # noqa: E402


def first_window(values, member, K, descending):
    """The first K member columns by (value, col) (descending: both reversed); -1 = empty."""
    big = torch.finfo(values.dtype).max
    v = torch.where(member, values, torch.full_like(values, -big if descending else big))
    order = torch.sort(v, dim=1, stable=True)[1]
    if descending:
        order = order.flip(1)
    cols = order[:, :K]
    ok = member.gather(1, cols)
    return torch.where(ok, cols, torch.full_like(cols, -1))


def layer(rows, cols, seed, tokens=512):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(64, cols, generator=g)
    x = torch.randn(tokens, 64, generator=g) @ basis + 0.5 * torch.randn(tokens, cols, generator=g)
    x = x * torch.exp(0.5 * torch.randn(cols, generator=g)) + 0.2 * torch.randn(cols, generator=g)
    st = dk.CalibrationStats(cols, hessian=True)
    st.add_batch(x.unsqueeze(0))
    M = st.hessian.double()
    M = (M + M.t()) * 0.5
    W = 0.02 * torch.randn(rows, cols, generator=g)
    return W, st, M


def study(rows, cols, K, sparsity, seed):
    W, st, M = layer(rows, cols, seed)
    dm = W * st.sum_metric_row
    wanda = wanda_metric(W, st.scaler_row)
    mask = initial_selection(wanda, sparsity, 0, 0)
    err = lane_sum(torch.where(mask, dm, torch.zeros(())))
    key = growth_keys(dm, st.var, 1.0)
    go_hi = (err > 0).unsqueeze(1)
    G = torch.where(go_hi, first_window(key, mask & (key > 0), K, True), first_window(key, mask & (key < 0), K, False))
    kept = ~mask
    P = torch.where(go_hi, first_window(wanda, kept & (dm < 0), K, False), first_window(wanda, kept & (dm > 0), K, False))
    g = torch.where(mask, W.double(), torch.zeros((), dtype=torch.float64)) @ M
    out = dict(rows=0, differ=0, accepted_wrong=0, max_rank=0, ranks=[])
    for i in range(rows):
        q, r = P[i], G[i]
        if not (q >= 0).any() or not (r >= 0).any() or err[i] == 0:
            continue
        qc, rc = q.clamp(min=0), r.clamp(min=0)
        ok = (q >= 0).unsqueeze(1) & (r >= 0).unsqueeze(0)
        res = []
        for dt in (torch.float64, torch.float32):
            w = W[i].double().to(dt)
            gi = g[i].to(dt)
            Md = M.to(dt)
            wq, wr = w[qc], w[rc]
            A = (2 * wq) * gi[qc] + (wq * wq) * Md[qc, qc]
            B = (wr * wr) * Md[rc, rc] - (2 * wr) * gi[rc]
            d = (A.unsqueeze(1) - ((2 * wq).unsqueeze(1) * wr.unsqueeze(0)) * Md[qc.unsqueeze(1), rc.unsqueeze(0)]) \
                + B.unsqueeze(0)
            d = torch.where(ok, d, torch.full_like(d, float("inf"))).flatten()
            res.append(d)
        d64, d32 = res
        w64 = int(torch.argmin(d64))  # first minimum
        w32 = int(torch.argmin(d32))
        out["rows"] += 1
        if w64 != w32 and bool(d64[w64] < 0):
            out["differ"] += 1
            out["accepted_wrong"] += int(bool(d64[w32] < 0))
        order32 = torch.sort(d32, stable=True)[1]
        rank = int((order32 == w64).nonzero()[0, 0]) + 1
        out["max_rank"] = max(out["max_rank"], rank)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--window", type=int, default=100)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print("| cols | sparsity | rows | float32 winner differs | ... and passes the float64 check | max float32 rank of the float64 winner |")
    print("|---|---|---|---|---|---|")
    for cols in args.cols:
        for sp in (0.5, 0.7):
            o = study(args.rows, cols, args.window, sp, seed=cols)
            print(f"| {cols} | {sp:.0%} | {o['rows']} | {o['differ']} | {o['accepted_wrong']} | {o['max_rank']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
