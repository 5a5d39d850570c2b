"""Self-test of objective_variants on random data: prototype 'diag, window 0' == package mse;
pruned counts kept; own model never increases. Run: OMP_NUM_THREADS=1 python benchmarks/experiments/selftest.py"""
import sys, time, torch
sys.path.insert(0, __file__.rsplit("/", 1)[0])
import dsnot_kernels as dk
from objective_variants import refine_variant, VARIANTS, second_moment_of, loss_cov
torch.set_num_threads(1)
torch.manual_seed(0)
for rows, cols in [(64, 128), (300, 576)]:
    st = dk.CalibrationStats(cols, hessian=True)
    for s in range(4):
        x = torch.randn(64, cols) @ (torch.randn(cols, cols) * 0.1 + torch.eye(cols)) + torch.randn(cols) * 0.5
        st.add_batch(x.unsqueeze(0))
    M = second_moment_of(st)
    W = torch.randn(rows, cols)
    for sp, n, m in [(0.6, 0, 0), (0.7, 0, 0), (0.5, 2, 4)]:
        ref, rs = dk.refine_mask(W, st.sum_metric_row, st.var, st.scaler_row, sparsity=sp, prune_n=n, prune_m=m,
                                 objective="mse", mean=st.mean, backend="torch", return_swaps=True)
        init = dk.refine_mask(W, st.sum_metric_row, st.var, st.scaler_row, sparsity=sp, prune_n=n, prune_m=m, max_cycle_time=0)
        for name, (model, win) in VARIANTS.items():
            t = time.perf_counter()
            mask, sw, info = refine_variant(W, st.sum_metric_row, st.var, st.scaler_row, st.mean, M, sparsity=sp,
                                            prune_n=n, prune_m=m, model=model, window=win)
            dt = time.perf_counter() - t
            assert (mask.sum(1) == init.sum(1)).all()
            if n:
                assert (mask.view(rows, -1, m).sum(2) == n).all()
            same = bool((mask == ref).all()) if name == "mse_proto" else None
            print(f"{rows}x{cols} {sp} {n}:{m} {name:9s} swaps {info['swaps']:5d} (pkg {int(rs.sum())}) L {info['L0']:.4g}->{info['L1']:.4g} "
                  f"inc {info['rows_increased']} drift {info['max_track_drift_rel']:.1e} trueMSE {float(loss_cov(W, mask, M).mean()):.5g} "
                  f"(init {float(loss_cov(W, init, M).mean()):.5g}, pkg {float(loss_cov(W, ref, M).mean()):.5g}) same={same} {dt:.2f}s")
            if name == "mse_proto":
                assert same and int(sw.sum()) == int(rs.sum())
print("OK")
