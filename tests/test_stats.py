"""CalibrationStats (spec §1): formulas, batch invariance, Hessian."""
import pytest
import torch

import dsnot_kernels as dk


def _samples(B=5, T=33, C=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, C, generator=g) * torch.rand(C, generator=g) * 3 + torch.randn(C, generator=g)


def test_formulas_match_definitions():
    x = _samples().double()
    st = dk.CalibrationStats(24, hessian=True)
    st.add_batch(x.float())
    S = x.shape[0]
    torch.testing.assert_close(st.scaler_row.double(), (x ** 2).sum(1).mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st.sum_metric_row.double(), x.sum(1).mean(0), rtol=1e-5, atol=1e-5)
    within = x.var(1, unbiased=False).mean(0)  # equal token counts: pooled = plain mean
    torch.testing.assert_close(st.var.double(), within, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st.mean.double(), x.reshape(-1, 24).mean(0), rtol=1e-5, atol=1e-5)
    flat = x.reshape(-1, 24)
    torch.testing.assert_close(st.hessian.double(), 2.0 / S * flat.t() @ flat, rtol=1e-4, atol=1e-3)
    assert st.nsamples == S
    # between-sample spread is NOT part of var: it is smaller than the all-token variance here
    assert bool((st.var.double() < flat.var(0, unbiased=False) + 1e-6).all())


def test_batch_invariance_is_bitwise():
    x = _samples(B=6)
    one_call = dk.CalibrationStats(24, hessian=True)
    one_call.add_batch(x)
    singles = dk.CalibrationStats(24, hessian=True)
    for b in range(6):
        singles.add_batch(x[b])           # (T, C): one sample
    split = dk.CalibrationStats(24, hessian=True)
    split.add_batch(x[:2])
    split.add_batch(x[2:])
    for other in (singles, split):
        for name in ("scaler_row", "sum_metric_row", "var", "mean", "hessian"):
            assert torch.equal(getattr(one_call, name), getattr(other, name)), name


def test_hessian_really_accumulates():
    st = dk.CalibrationStats(8, hessian=True)
    st.add_batch(_samples(B=1, C=8))
    h1 = st.hessian.clone()
    st.add_batch(_samples(B=1, C=8, seed=1))
    assert not torch.equal(h1, st.hessian) and float(st.hessian.abs().sum()) > 0


def test_sparsegpt_metric_from_stats():
    st = dk.CalibrationStats(16, hessian=True)
    st.add_batch(_samples(B=4, C=16))
    W = torch.randn(8, 16, generator=torch.Generator().manual_seed(5))
    metric = dk.initial_metric("sparsegpt_metric", W, st)
    H = st.hessian.double() + 0.01 * st.hessian.diag().double().mean() * torch.eye(16, dtype=torch.float64)
    d = torch.linalg.cholesky(torch.linalg.inv(H), upper=True).diag()
    torch.testing.assert_close(metric.double(), W.double() ** 2 / d ** 2, rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="hessian=True"):
        dk.initial_metric("sparsegpt_metric", W, dk.CalibrationStats(16))
    with pytest.raises(ValueError, match="sparsegpt_metric"):  # "sparsegpt" is SparseGPT as published, not a metric
        dk.initial_metric("sparsegpt", W, st)


def test_add_batch_rejects_bad_input():
    st = dk.CalibrationStats(4)
    with pytest.raises(ValueError, match="in_features|4"):
        st.add_batch(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="non-finite"):
        st.add_batch(torch.tensor([[float("nan")] * 4]))
    with pytest.raises(TypeError):
        st.add_batch(torch.ones(2, 4, dtype=torch.int64))


# --- bit-identity of the batched statistics to the per-sample implementation (issue #16) --------

class _OldStats:
    """The per-sample implementation before the batched reductions (the oracle, kept verbatim)."""

    def __init__(self, C, hessian):
        z = lambda: torch.zeros(C, dtype=torch.float32)  # noqa: E731
        self.scaler_row, self.sum_metric_row, self.var, self.mean = z(), z(), z(), z()
        self.nsamples = self.ntokens = 0
        self.hessian = torch.zeros((C, C), dtype=torch.float32) if hessian else None

    def add_batch(self, x):
        import math
        if x.dim() == 2:
            x = x.unsqueeze(0)
        for b in range(x.shape[0]):
            inp = x[b].t().type(torch.float32)
            mean_inp = torch.mean(inp, dim=1)
            var_inp = torch.var(inp, dim=1, unbiased=False)
            num = inp.shape[1]
            if self.ntokens == 0:
                self.var, self.mean = var_inp, mean_inp
            else:
                self.var = (self.var * self.ntokens + var_inp * num) / (self.ntokens + num)
                self.mean = (self.mean * self.ntokens + mean_inp * num) / (self.ntokens + num)
            self.ntokens += num
            self.scaler_row *= self.nsamples / (self.nsamples + 1)
            self.sum_metric_row *= self.nsamples / (self.nsamples + 1)
            if self.hessian is not None:
                self.hessian *= self.nsamples / (self.nsamples + 1)
            self.nsamples += 1
            self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples
            self.sum_metric_row += torch.sum(inp, dim=1) / self.nsamples
            if self.hessian is not None:
                scaled = math.sqrt(2 / self.nsamples) * inp
                self.hessian += scaled.matmul(scaled.t())


NAMES = ("scaler_row", "sum_metric_row", "var", "mean", "hessian")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape,splits,dtype,layout", [
    ((8, 256, 576), (8,), torch.float32, "contiguous"),
    ((7, 33, 24), (3, 1, 3), torch.float32, "contiguous"),
    ((5, 17, 5), (1, 1, 1, 1, 1), torch.bfloat16, "contiguous"),
    ((6, 9, 1), (2, 4), torch.float32, "contiguous"),
    ((3, 40000, 1), (3,), torch.float32, "contiguous"),     # C == 1: torch splits one output's sum across threads
    ((4, 64, 130), (4,), torch.float16, "contiguous"),
    ((6, 31, 48), (2, 2, 2), torch.float32, "transposed"),  # a (B, T, C) view of (B, C, T) memory
    ((4, 1, 9), (4,), torch.float32, "contiguous"),         # one token per sample
])
def test_batched_stats_bit_identical_to_per_sample(shape, splits, dtype, layout, threads):
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        B, T, C = shape
        for seed in range(2):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(B, C, T, generator=g).transpose(1, 2) if layout == "transposed" else \
                torch.randn(B, T, C, generator=g)
            x = (x * torch.rand(C, generator=g) * 4 + torch.randn(C, generator=g)).to(dtype)
            hess = C <= 600
            old, new = _OldStats(C, hess), dk.CalibrationStats(C, hessian=hess)
            start = 0
            for n in splits:
                old.add_batch(x[start:start + n])
                new.add_batch(x[start:start + n])
                start += n
            for name in NAMES:
                if getattr(old, name) is None:
                    continue
                assert torch.equal(getattr(old, name), getattr(new, name)), (name, shape, seed)
            assert (old.nsamples, old.ntokens) == (new.nsamples, new.ntokens)
    finally:
        torch.set_num_threads(old_threads)


def test_batched_stats_reject_non_finite_and_leave_state_untouched():
    st = dk.CalibrationStats(6, hessian=True)
    st.add_batch(_samples(B=2, C=6))
    before = {k: v.clone() for k, v in st.to_dict().items() if isinstance(v, torch.Tensor)}
    x = _samples(B=3, C=6, seed=3)
    x[2, 5, 1] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        st.add_batch(x)
    x[2, 5, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        st.add_batch(x)
    assert st.nsamples == 2
    for k, v in before.items():
        assert torch.equal(v, getattr(st, k)), k
    # finite but huge: the per-sample sum overflows; accepted, as before (the check is on the input)
    big = torch.full((1, 4, 6), 3e38)
    st.add_batch(big)
    assert st.nsamples == 3


# --- the driver's statistics pass: shared inputs, M only where needed (issue #16) -------------------

def _block_and_inputs(seed=0):
    from pruning_models import calibration, tiny_model
    from dsnot_kernels.pruning.adapters import find_blocks
    from dsnot_kernels.pruning.capture import capture_block_calls
    model = tiny_model("llama", seed=seed)
    _, blocks = find_blocks(model)
    with torch.no_grad():
        cap = capture_block_calls(model, blocks, list(calibration(nsamples=7).split(3)), "cpu")
    return blocks[0], cap.inputs, [c[0] for c in cap.calls]


def test_shared_statistics_are_bit_identical_to_separate_ones():
    from dsnot_kernels.pruning.adapters import find_sublayers, weight_view
    from dsnot_kernels.pruning.sublayer import statistics_pass
    block, inputs, calls = _block_and_inputs()
    subs = find_sublayers(block)
    config = dk.PruneConfig(objective="cov", skip="none")
    with torch.no_grad():
        shared = statistics_pass(block, subs, inputs, calls, torch.device("cpu"), config, None, 0)
        separate = {n: dk.CalibrationStats(weight_view(m).shape[1], hessian=True) for n, m in subs.items()}
        hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: separate[n].add_batch(inp[0]))
                 for n, m in subs.items()]
        for x, c in zip(inputs, calls):
            block(x, *c.args, **c.kwargs)
        for h in hooks:
            h.remove()
    groups = shared.groups()
    assert groups["self_attn.q_proj"] == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    assert groups["mlp.gate_proj"] == ["mlp.gate_proj", "mlp.up_proj"]
    assert len(groups) == 4  # qkv, o, gate/up, down
    for name in subs:
        got, want = shared.stats_of(name), separate[name]
        for field in NAMES:
            assert torch.equal(getattr(got, field), getattr(want, field)), (name, field)
        assert got.nsamples == want.nsamples == 7


@pytest.mark.parametrize("kw,with_m", [
    (dict(objective="cov", refine=False), set()),                     # Wanda-only baseline: no M
    (dict(objective="cov_window", refine=False), set()),
    (dict(objective="dsnot", skip="none"), set()),
    (dict(objective="cov_window", skip="mlp"), {"self_attn"}),         # only refined sub-layers
    (dict(objective="cov", skip="none"), {"self_attn", "mlp"}),
    (dict(objective="dsnot", refine=False, record_error=True), {"self_attn", "mlp"}),
    (dict(initial="sparsegpt", refine=False), {"self_attn", "mlp"}),
])
def test_second_moment_only_where_needed(kw, with_m):
    from dsnot_kernels.pruning.adapters import find_sublayers, sublayer_kind
    from dsnot_kernels.pruning.sublayer import needs_second_moment, statistics_pass
    block, inputs, calls = _block_and_inputs()
    subs = find_sublayers(block)
    config = dk.PruneConfig(**kw)
    assert needs_second_moment(config) == bool(with_m)
    with torch.no_grad():
        st = statistics_pass(block, subs, inputs, calls, torch.device("cpu"), config, None, 0)
    for name in subs:
        assert (st.stats_of(name).hessian is not None) == (sublayer_kind(name) in with_m), name
