"""prune_model and dsnot-prune under torch.distributed (gloo, 2 processes on 127.0.0.1): the masks
and zeroed weights of one process, and failures that end every rank with a clear message (#20)."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dsnot_kernels as dk
from dsnot_kernels.pruning import distributed as dp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT = 20  # process-group timeout of the workers (s)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", **extra)
    return env


def _launch(cases, tmp_path, world=2, limit=240):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(HERE / "dist_worker.py"), ",".join(cases), str(tmp_path)],
                              env=_env(RANK=str(r), WORLD_SIZE=str(world), MASTER_PORT=str(port),
                                       DIST_TIMEOUT=str(TIMEOUT)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    t0 = time.perf_counter()
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=max(1, limit - (time.perf_counter() - t0)))[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"{cases}: a rank did not end within {limit} s (hang)")
    results = {}
    for case in cases:
        results[case] = []
        for r in range(world):
            f = tmp_path / f"{case}-{r}.pt"
            assert f.exists(), f"rank {r} wrote no result for {case}:\n{logs[r]}"
            results[case].append(torch.load(f, weights_only=False))
    return results


def test_masks_and_weights_identical_to_one_process(tmp_path):
    sys.path.insert(0, str(HERE))
    import dist_worker
    results = _launch(["masks"], tmp_path)["masks"]
    for r, res in enumerate(results):
        assert res["error"] is None, f"rank {r}: {res['error']}\n{res.get('traceback')}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count
    try:
        for case in dist_worker.MASK_CASES:
            masks, state, _ = dist_worker.prune_collect(*case)
            assert len(masks) == 3 * (7 if len(case) == 2 else 4)
            for r, res in enumerate(results):
                dmasks, dstate, reduce_s, local = res[case]
                assert local == (4, 3)[r]  # 7 samples in batches of 2: batches 0-1 on rank 0, 2-3 on rank 1
                assert dmasks.keys() == masks.keys()
                for key in masks:
                    assert torch.equal(dmasks[key], masks[key]), (case, r, key)
                for key in state:
                    assert torch.equal(dstate[key], state[key]), (case, r, key)
                assert reduce_s > 0
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_every_family_two_ranks_equal_one(tmp_path):
    """Every family of tests/pruning_models.py (swap at 60 % and SparseGPT 2:4): the masks and the
    weights of 2 ranks are those of one process (one launch for all families)."""
    sys.path.insert(0, str(HERE))
    import dist_worker
    results = _launch(["families"], tmp_path, limit=600)["families"]
    for r, res in enumerate(results):
        assert res["error"] is None, f"rank {r}: {res['error']}\n{res.get('traceback')}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count
    try:
        for case in dist_worker.FAMILY_CASES:
            masks, state, _ = dist_worker.family_collect(*case)
            for r, res in enumerate(results):
                dmasks, dstate, world, local = res[case]
                assert world == 2 and local == (4, 1)[r]
                assert dmasks.keys() == masks.keys() and len(masks) > 0
                for key in masks:
                    assert torch.equal(dmasks[key], masks[key]), (case, r, key)
                for key in state:
                    assert torch.equal(dstate[key], state[key]), (case, r, key)
    finally:
        torch.set_num_threads(threads)
@pytest.mark.slow  # two worker processes (~50 s on the loaded 2-core machine)
def test_owl_profile_identical_to_one_process(tmp_path):
    """OWL's outlier pass combines the ranks' statistics: the same ratios, masks and weights."""
    sys.path.insert(0, str(HERE))
    import dist_worker
    results = _launch(["owl"], tmp_path)["owl"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        masks, state, report = dist_worker.prune_collect("unstructured", "dsnot", **dist_worker.OWL)
    finally:
        torch.set_num_threads(threads)
    assert len(set(report["sparsity_profile"]["block_sparsity"])) > 1
    for r, res in enumerate(results):
        assert res["error"] is None, f"rank {r}: {res['error']}\n{res.get('traceback')}"
        dmasks, dstate, dprofile = res["owl"]
        assert dprofile["outlier_ratios"] == report["sparsity_profile"]["outlier_ratios"]
        assert dprofile["block_sparsity"] == report["sparsity_profile"]["block_sparsity"]
        assert dmasks.keys() == masks.keys() and all(torch.equal(dmasks[k], masks[k]) for k in masks)
        assert all(torch.equal(dstate[k], state[k]) for k in state)


def test_failures_end_every_rank_with_a_clear_message_within_the_timeout(tmp_path):
    """Too many ranks and mismatched arguments: ValueError on every rank (the group stays usable);
    then a rank that fails mid-prune: it reports its error, the other a PruningError that says so."""
    results = _launch(["too_many", "mismatch", "rank_fails"], tmp_path, limit=TIMEOUT + 90)
    for case, expect in (("too_many", "2 ranks but only 1 calibration batch"),
                         ("mismatch", "ranks [1] were given a different config")):
        for r, res in enumerate(results[case]):
            assert res["error"] is not None and expect in res["error"], (case, r, res["error"])
            assert res["error"].startswith("ValueError")
    failed, other = results["rank_fails"][1], results["rank_fails"][0]
    assert "injected failure on rank 1" in failed["error"] and "stage on_mask" in failed["error"]
    err0 = other["error"]
    assert err0 is not None and err0.startswith("PruningError") and "on rank 0 of 2" in err0, err0
    assert "another rank probably failed" in err0
    assert other["seconds"] < TIMEOUT + 30


def test_shares_are_contiguous_and_cover():
    for n in range(0, 12):
        for size in range(1, 5):
            parts = [dp.share(n, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(parts[k][1] == parts[k + 1][0] for k in range(size - 1))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


@pytest.mark.parametrize("objective", ["dsnot", "mse", "cov", "cov_window"])
@pytest.mark.parametrize("pattern", [(0, 0), (2, 4)])
@pytest.mark.parametrize("initial", ["wanda", "magnitude"])
def test_mask_rows_are_independent(objective, pattern, initial):
    """What the row split relies on: refine_mask on a row slice gives those rows of the full mask."""
    g = torch.Generator().manual_seed(3)
    rows, cols = 13, 24
    W = torch.randn(rows, cols, generator=g)
    st = dk.CalibrationStats(cols, hessian=True)
    st.add_batch(torch.randn(4, 16, cols, generator=g) * torch.rand(cols, generator=g) + 0.3)
    metric = None if initial == "wanda" else dk.initial_metric(initial, W, st)

    def run(r0, r1):
        return dk.refine_mask(W[r0:r1], st.sum_metric_row, st.var, st.scaler_row, sparsity=0.5,
                              prune_n=pattern[0], prune_m=pattern[1], objective=objective,
                              initial_metric=None if metric is None else metric[r0:r1],
                              mean=st.mean if objective == "mse" else None,
                              second_moment=st.hessian if objective.startswith("cov") else None,
                              window=5, backend="torch")
    full = run(0, rows)
    for size in (2, 3):
        parts = [run(*dp.share(rows, r, size)) for r in range(size)]
        assert torch.equal(torch.cat(parts), full)


@pytest.mark.slow
def test_cli_under_torchrun_saves_the_masks_of_one_process(tmp_path):
    """dsnot-prune under torchrun --nproc_per_node 2 on the embedded model: same saved weights."""
    from safetensors.torch import load_file
    args = ["--nsamples", "4", "--seqlen", "32", "--batch-size", "1", "--eval-windows", "1", "--no-dense",
            "--skip", "none", "--threads", "1", "--quiet"]
    one = subprocess.run([sys.executable, "-m", "dsnot_kernels", *args, "--save", str(tmp_path / "one")],
                         env=_env(), capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                          "-m", "dsnot_kernels", *args, "--save", str(tmp_path / "two"), "--json",
                          str(tmp_path / "two.json")],
                         env=_env(DSNOT_DIST_TIMEOUT="300"), capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("| method") == 1  # only rank 0 prints the table
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    import json
    report = json.loads((tmp_path / "two.json").read_text())["reports"][-1]
    assert report["world_size"] == 2
