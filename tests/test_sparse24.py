"""N:M validation (``nm_violations``, ``check_nm``) and the 2:4 export (``to_sparse_24``)."""
import json

import pytest
import torch
from torch import nn

import dsnot_kernels as dk
from dsnot_kernels.sparse24 import sparse24_backend


def nm_mask(rows, cols, n=2, m=4, seed=0):
    """A valid N:M mask (True = pruned): n random positions in every group of m."""
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(rows, cols // m, m, generator=g).argsort(-1)
    return (order < n).reshape(rows, cols)


def nm_weight(rows, cols, n=2, m=4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(rows, cols, generator=g).to(dtype)
    return w.masked_fill(nm_mask(rows, cols, n, m, seed), 0)


# --- nm_violations / check_nm ------------------------------------------------------------------

@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 4)])
def test_valid_masks_and_weights(n, m):
    assert dk.nm_violations(nm_mask(6, 4 * m, n, m), n, m) == []
    assert dk.nm_violations(nm_weight(6, 4 * m, n, m), n, m) == []
    dk.check_nm(nm_mask(6, 4 * m, n, m), n, m)


def test_mask_with_too_many_and_too_few_pruned():
    mask = nm_mask(5, 16)
    mask[1, 4:8] = torch.tensor([True, True, True, False])   # 3 pruned: too many
    mask[3, 12:16] = torch.tensor([False, False, True, False])  # 1 pruned: too few
    mask[4, 0:4] = True                                         # 4 pruned
    assert dk.nm_violations(mask) == [(1, 1), (3, 3), (4, 0)]
    with pytest.raises(ValueError) as err:
        dk.check_nm(mask, name="layer.mask")
    text = str(err.value)
    assert "layer.mask is not 2:4: 3 of 20 groups in 3 of 5 rows" in text
    assert "row 1, group 1 (columns 4-7): [True, True, True, False] -> 3 pruned" in text
    assert "row 3, group 3 (columns 12-15): [False, False, True, False] -> 1 pruned" in text


def test_weight_with_too_many_nonzeros():
    w = nm_weight(4, 8)
    assert dk.nm_violations(w) == []
    w[2, 4:8] = torch.tensor([1.0, 0.0, -2.0, 0.5])   # 3 nonzeros
    w[0, 0:4] = torch.tensor([0.0, 0.0, 0.0, 0.0])   # fewer nonzeros is fine for a weight
    assert dk.nm_violations(w) == [(2, 1)]
    with pytest.raises(ValueError, match=r"row 2, group 1 \(columns 4-7\): \[1, 0, -2, 0.5\] -> 3 nonzeros"):
        dk.check_nm(w)
    assert dk.nm_violations(torch.ones(3, 8)) == [(r, g) for r in range(3) for g in range(2)]
    assert dk.nm_violations(w.half()) == [(2, 1)] and dk.nm_violations(w.bfloat16()) == [(2, 1)]


def test_one_dimensional_row():
    row = torch.tensor([1.0, 0, 0, 2, 3, 4, 0, 5])
    assert dk.nm_violations(row) == [(0, 1)]
    assert dk.nm_violations(row == 0) == [(0, 1)]


def test_wrong_shapes_and_arguments():
    with pytest.raises(ValueError, match="not divisible by m=4"):
        dk.nm_violations(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="not divisible by m=8"):
        dk.check_nm(torch.zeros(2, 12, dtype=torch.bool), 4, 8)
    with pytest.raises(ValueError, match="2-D"):
        dk.nm_violations(torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match="0 < n < m"):
        dk.nm_violations(torch.zeros(2, 4), 4, 4)
    with pytest.raises(TypeError):
        dk.nm_violations([[0, 1, 0, 1]])


def test_report_is_bounded():
    with pytest.raises(ValueError) as err:
        dk.check_nm(torch.ones(50, 64), max_rows=2)
    text = str(err.value)
    assert "800 of 800 groups in 50 of 50 rows" in text and "48 more rows" in text and text.count("\n") < 12


def test_refined_nm_masks_are_valid():
    """What the project's own N:M output looks like: refine_mask keeps exactly N per group."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=g)
    stats = dk.CalibrationStats(64)
    stats.add_batch(torch.randn(2, 8, 64, generator=g) + 0.5)
    mask = dk.refine_mask(w, stats.sum_metric_row, stats.var, stats.scaler_row, prune_n=2, prune_m=4)
    assert dk.nm_violations(mask) == [] and dk.nm_violations(w.masked_fill(mask, 0)) == []


# --- to_sparse_24 --------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, dtype=torch.float16):
        super().__init__()
        self.up = nn.Linear(64, 128).to(dtype)
        self.down = nn.Linear(128, 64, bias=False).to(dtype)
        self.lm_head = nn.Linear(64, 32).to(dtype)   # never pruned
        self.tiny = nn.Linear(8, 8).to(dtype)
        with torch.no_grad():
            self.up.weight.copy_(nm_weight(128, 64, seed=1, dtype=dtype))
            self.down.weight.copy_(nm_weight(64, 128, seed=2, dtype=dtype))

    def forward(self, x):
        return self.lm_head(self.down(torch.relu(self.up(x))))


def test_refuses_on_cpu_with_the_reason():
    model = Block()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"cannot run here: the weights are on cpu: .*CUDA GPUs of compute "
                                           r"capability 8.0\+"):
        dk.to_sparse_24(model, min_size=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sparse24_backend("cpu")[1] is not None


def test_dry_run_on_cpu_reports_what_would_be_converted():
    report = dk.to_sparse_24(Block(), min_size=16, dry_run=True, backend="cusparselt")
    json.dumps(report)
    assert report["refusal"].startswith("to_sparse_24 cannot run here: the weights are on cpu")
    assert [c["name"] for c in report["converted"]] == ["up", "down"]
    skipped = {s["name"]: s["reason"] for s in report["skipped"]}
    assert skipped["tiny"] == "smaller than min_size=16"
    assert skipped["lm_head"].startswith("not pruned")
    assert report["backend"] == "cusparselt" and report["dtype"] == "torch.float16"


def test_dry_run_shape_guards_per_backend():
    # (64, 128) and (128, 64) fit cuSPARSELt's multiples of 16; CUTLASS needs columns % 64 and rows % 32.
    model = Block()
    model.odd = nn.Linear(64, 48).half()  # 48 rows: a multiple of 16, not of 32
    with torch.no_grad():
        model.odd.weight.copy_(nm_weight(48, 64, seed=4, dtype=torch.float16))
    lt = dk.to_sparse_24(model, min_size=16, dry_run=True, backend="cusparselt")
    assert "odd" in [c["name"] for c in lt["converted"]]
    cl = dk.to_sparse_24(model, min_size=16, dry_run=True, backend="cutlass")
    reason = {s["name"]: s["reason"] for s in cl["skipped"]}["odd"]
    assert reason == "cutlass needs torch.float16 weights with rows a multiple of 32 and columns a multiple of 64"
    with pytest.raises(ValueError, match="backend must be"):
        dk.to_sparse_24(model, dry_run=True, backend="triton")


def test_refuses_unsupported_dtypes():
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        dk.to_sparse_24(Block(torch.float32), min_size=0, dry_run=True)
    with pytest.raises(ValueError, match="dtype must be"):
        dk.to_sparse_24(Block(), dtype=torch.float32)
    report = dk.to_sparse_24(Block(torch.float32), dtype=torch.bfloat16, min_size=16, dry_run=True)
    assert report["dtype"] == "torch.bfloat16" and len(report["converted"]) == 2


def test_refuses_layers_that_are_not_24():
    model = Block()
    with torch.no_grad():
        model.up.weight[5, 8:12] = 1.0         # a broken group in a pruned layer
    with pytest.raises(ValueError) as err:
        dk.to_sparse_24(model, min_size=16, dry_run=True)
    text = str(err.value)
    assert "1 linear layers are not 2:4 (nothing was converted)" in text
    assert "up.weight is not 2:4: 1 of 2048 groups" in text and "row 5, group 2 (columns 8-11)" in text
    with pytest.raises(ValueError, match="lm_head.weight is not 2:4"):
        dk.to_sparse_24(Block(), min_size=16, dry_run=True, skip_dense=False)


def test_parametrized_and_subclassed_layers_are_skipped():
    model = Block()
    model.attn = nn.MultiheadAttention(64, 4).half()   # out_proj is a Linear subclass
    torch.nn.utils.parametrize.register_parametrization(model.down, "weight", nn.Identity())
    report = dk.to_sparse_24(model, min_size=16, dry_run=True)
    skipped = {s["name"]: s["reason"] for s in report["skipped"]}
    assert "squash_mask" in skipped["down"] and "subclass" in skipped["attn.out_proj"]
    assert [c["name"] for c in report["converted"]] == ["up"]


def _gpu_reason():
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    return sparse24_backend("cuda")[1]


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_reason() is not None, reason=str(_gpu_reason()))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_converted_layers_match_masked_dense(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)).to("cuda", dtype)
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.copy_(nm_weight(*layer.weight.shape, seed=layer.in_features, dtype=dtype).cuda())
    x = torch.randn(3, 17, 256, device="cuda", dtype=dtype)  # 51 tokens: not a multiple of the minimum
    with torch.no_grad():
        dense = model(x)
        report = dk.to_sparse_24(model, min_size=0)
        sparse = model(x)
    assert [c["name"] for c in report["converted"]] == ["0", "2"]
    assert type(model[0].weight).__name__.startswith("SparseSemiStructuredTensor")
    tol = 2e-2 if dtype == torch.float16 else 8e-2
    torch.testing.assert_close(sparse, dense, rtol=tol, atol=tol)
    with torch.no_grad():
        again = dk.to_sparse_24(model, min_size=0)  # already converted: skipped, no error
    assert {s["reason"] for s in again["skipped"]} == {"already semi-structured"}
