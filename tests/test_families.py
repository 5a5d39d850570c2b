"""Model families, tested without downloads (docs/MODELS.md): tiny random-config models of every
entry of ``pruning_models.FAMILY_TABLE``, pruned unstructured 60 % and 2:4 with objective "swap"
(every sub-layer refined) and with initial "sparsegpt" (the authors' default skip rule). Checked:
zeros on every linear weight of every block (per row / per 2:4 group), the skip rule's kinds,
finite logits, save_model -> from_pretrained round trip, and masks equal to a reference that runs
the whole model with hooks (so per-layer attention masks, sliding windows and soft-capping reach
the statistics exactly as in the model's own forward). Two ranks = one rank: tests/test_distributed.py."""
import pytest
import torch
from torch import nn

import dsnot_kernels as dk
from dsnot_kernels.models import save_model
from dsnot_kernels.pruning import find_blocks
from pruning_models import ALL_FAMILIES, FAMILY_TABLE, calibration, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

CONFIGS = {
    "swap-60%": dict(sparsity=0.6, objective="swap", refine=True, skip="none"),
    "swap-2:4": dict(pattern="2:4", objective="swap", refine=True, skip="none"),
    "sparsegpt-60%": dict(sparsity=0.6, initial="sparsegpt"),     # refine, skip="mlp": the authors' rule
    "sparsegpt-2:4": dict(pattern="2:4", initial="sparsegpt"),
}
FAST = ("swap-60%", "sparsegpt-2:4")
CASES = [pytest.param(f, c, marks=() if c in FAST else pytest.mark.slow) for f in ALL_FAMILIES for c in CONFIGS]


def family_config(name, **kw):
    return dk.PruneConfig(batch_size=2, progress=False, **CONFIGS[name], **kw)


def linear_weights(model):
    """{(block, name): (rows, cols) weight view} of every linear layer (nn.Linear or GPT-2 Conv1D) in
    every decoder block, found without the driver's adapters."""
    from transformers.pytorch_utils import Conv1D
    out = {}
    for i, block in enumerate(find_blocks(model)[1]):
        for name, m in block.named_modules():
            if isinstance(m, nn.Linear):
                out[(i, name)] = m.weight.data
            elif isinstance(m, Conv1D):
                out[(i, name)] = m.weight.data.t()
    return out


def check_zeros(W, config):
    rows, cols = W.shape
    zeros = W == 0
    if config.prune_n:
        assert dk.nm_violations(W, n=2, m=4) == []
        assert (zeros.reshape(rows, cols // 4, 4).sum(-1) == 2).all()
    elif config.initial == "sparsegpt":   # SparseGPT's unstructured mask: a ratio per 128-column block
        want = sum(int(rows * (min(c + 128, cols) - c) * 0.6) for c in range(0, cols, 128))
        assert int(zeros.sum()) == want
    else:                                 # Wanda + swaps: the same count in every row
        assert (zeros.sum(1) == int(cols * 0.6)).all()


@pytest.mark.parametrize("family,name", CASES)
def test_family_prunes_every_linear_weight(family, name, tmp_path):
    from transformers import AutoModelForCausalLM

    spec = FAMILY_TABLE[family]
    model = tiny_model(family)
    config = family_config(name)
    report = dk.prune_model(model, calibration(nsamples=4, seqlen=24), config)
    weights = linear_weights(model)
    assert {n for _, n in weights} == set(spec.attention + spec.mlp)
    assert len(report["sublayers"]) == len(weights)
    for key, W in weights.items():
        check_zeros(W, config)
    kinds = {e["name"]: e["kind"] for e in report["sublayers"]}
    assert kinds == {**{n: "self_attn" for n in spec.attention}, **{n: "mlp" for n in spec.mlp}}
    for e in report["sublayers"]:   # swap: skip "none"; sparsegpt: the authors' skip="mlp"
        assert e["refined"] == (config.skip == "none" or e["kind"] == "self_attn"), e["name"]
    logits = model(input_ids=calibration(nsamples=2, seqlen=20, seed=5)).logits
    assert logits.shape == (2, 20, 96) and torch.isfinite(logits).all()

    save_model(model, None, tmp_path / family)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / family, dtype=torch.float32)
    state, back = model.state_dict(), loaded.state_dict()
    assert state.keys() == back.keys()
    for k in state:
        assert torch.equal(state[k], back[k]), k
    ids = calibration(nsamples=1, seqlen=20, seed=6)
    assert torch.equal(loaded.eval()(input_ids=ids).logits, model(input_ids=ids).logits)


@torch.no_grad()
def whole_model_wanda_masks(model, calib, sparsity, batch_size):
    """Reference: block by block, hooks on the block's linear layers while the WHOLE model runs on
    the calibration batches (earlier blocks already pruned), Wanda masks from those inputs."""
    masks = {}
    for i, block in enumerate(find_blocks(model)[1]):
        layers = {n: W for (b, n), W in linear_weights(model).items() if b == i}
        mods = dict(block.named_modules())
        stats = {n: dk.CalibrationStats(W.shape[1]) for n, W in layers.items()}
        hooks = [mods[n].register_forward_hook(lambda m, inp, out, n=n: stats[n].add_batch(inp[0]))
                 for n in layers]
        for batch in calib.split(batch_size):
            model(input_ids=batch, use_cache=False)
        for h in hooks:
            h.remove()
        for n, W in layers.items():
            st = stats[n]
            mask = dk.refine_mask(W, st.sum_metric_row, st.var, st.scaler_row, sparsity=sparsity, max_cycle_time=0)
            W[mask] = 0
            masks[(i, n)] = mask
    return masks


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_driver_statistics_are_the_whole_models(family):
    """The driver runs each block alone on captured inputs and call arguments; its masks equal
    those from the whole model's forward (Gemma 2/3: a sliding-window and a full-attention layer,
    8-token window on 24-token samples; Gemma 3: a RoPE base per layer type)."""
    calib = calibration(nsamples=4, seqlen=24, seed=2)
    model, ref = tiny_model(family, layers=3), tiny_model(family, layers=3)
    got = {}
    dk.prune_model(model, calib, dk.PruneConfig(sparsity=0.5, refine=False, batch_size=2, progress=False),
                   on_mask=lambda i, n, m: got.__setitem__((i, n), m.clone()))
    want = whole_model_wanda_masks(ref.eval(), calib, 0.5, 2)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_models_doc_lists_every_family_of_the_table():
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs" / "MODELS.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    for name, spec in FAMILY_TABLE.items():
        assert name in rows, f"docs/MODELS.md has no row for {name}"
        assert f"`{spec.config_class}`" in rows[name], name
