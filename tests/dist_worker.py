"""One rank of tests/test_distributed.py: ``python tests/dist_worker.py CASE OUTDIR`` with RANK,
WORLD_SIZE, MASTER_PORT in the environment (127.0.0.1 only). Writes OUTDIR/CASE-RANK.pt."""
import datetime
import os
import sys
import time
import traceback

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pruning_models import ALL_FAMILIES, calibration, tiny_model  # noqa: E402

import dsnot_kernels as dk  # noqa: E402

MASK_CASES = [("unstructured", "dsnot"), ("2:4", "dsnot"), ("unstructured", "cov_window"), ("2:4", "cov_window"),
              ("unstructured", "cov_window", "gpt2")]  # GPT-2: transposed (Conv1D) weights


# every family of tests/pruning_models.py, with the two ends of tests/test_families.py's matrix
FAMILY_CASES = [(family, name) for family in ALL_FAMILIES for name in ("swap-60%", "sparsegpt-2:4")]
FAMILY_CONFIGS = {"swap-60%": dict(sparsity=0.6, objective="swap", refine=True, skip="none"),
                  "sparsegpt-2:4": dict(pattern="2:4", initial="sparsegpt")}


def family_collect(family, name):
    """(masks, state_dict, report) of one tiny family model pruned with one of FAMILY_CONFIGS
    (5 samples in batches of 2: 2 batches on rank 0, 1 on rank 1)."""
    model = tiny_model(family, seed=0, layers=2)
    masks = {}
    report = dk.prune_model(model, calibration(nsamples=5, seqlen=24),
                            dk.PruneConfig(batch_size=2, progress=False, **FAMILY_CONFIGS[name]),
                            on_mask=lambda i, n, mask: masks.__setitem__((i, n), mask.clone()))
    return masks, {k: v.clone() for k, v in model.state_dict().items()}, report
OWL = dict(sparsity_profile="owl", owl_m=2.0, owl_lambda=0.1)


def config(pattern, objective, **kw):
    return dk.PruneConfig(pattern=pattern, sparsity=0.5, objective=objective, skip="none", window=7,
                          batch_size=2, progress=False, **kw)


def prune_collect(pattern, objective, family="llama", nsamples=7, on_extra=None, **kw):
    """(masks, state_dict, report) of pruning a fresh tiny model (3 blocks)."""
    model = tiny_model(family, seed=0, layers=3)
    masks = {}

    def on_mask(i, name, mask):
        masks[(i, name)] = mask.clone()
        if on_extra is not None:
            on_extra(i, name)
    report = dk.prune_model(model, calibration(nsamples=nsamples, seqlen=24), config(pattern, objective, **kw),
                            on_mask=on_mask)
    return masks, {k: v.clone() for k, v in model.state_dict().items()}, report


def main():
    cases, out = sys.argv[1].split(","), sys.argv[2]
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}", rank=rank,
                            world_size=int(os.environ["WORLD_SIZE"]),
                            timeout=datetime.timedelta(seconds=float(os.environ.get("DIST_TIMEOUT", "30"))))
    for case in cases:
        run_case(case, rank, out)
    os._exit(0)  # quick exit: a failed peer may be gone, and exiting closes the connections


def run_case(case, rank, out):
    result = {}
    t0 = time.perf_counter()
    try:
        if case == "masks":
            for case_ in MASK_CASES:
                masks, state, report = prune_collect(*case_)
                result[case_] = (masks, state, report["reduce_time_s"], report["local_samples"])
        elif case == "families":
            for case_ in FAMILY_CASES:
                masks, state, report = family_collect(*case_)
                result[case_] = (masks, state, report["world_size"], report["local_samples"])
        elif case == "owl":  # OWL's dense outlier pass under torch.distributed, then row-split masks
            masks, state, report = prune_collect("unstructured", "dsnot", **OWL)
            result["owl"] = (masks, state, report["sparsity_profile"])
        elif case == "too_many":
            prune_collect("unstructured", "dsnot", nsamples=2)      # one batch of 2 for 2 ranks
        elif case == "mismatch":
            prune_collect("unstructured", "dsnot", update_threshold=0.1 + 0.1 * rank)  # rank 1 differs
        elif case == "rank_fails":
            def fail(i, name):
                if rank == 1 and i == 1:
                    raise RuntimeError("injected failure on rank 1")
            prune_collect("unstructured", "dsnot", on_extra=fail)
        result["error"] = None
    except Exception as exc:  # reported to the test, which checks the message
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
    result["seconds"] = time.perf_counter() - t0
    torch.save(result, os.path.join(out, f"{case}-{rank}.pt"))


if __name__ == "__main__":
    main()
