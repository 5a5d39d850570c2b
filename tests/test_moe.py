"""Mixture-of-experts models: every expert pruned as a standalone linear layer on exactly its routed
tokens (fused 3-D experts and nn.ModuleList experts), routers left dense, the zero-token policy,
and no silent partial prune (tiny random configs, no download)."""
import copy

import pytest
import torch
from torch import nn

import dsnot_kernels as dk
from dsnot_kernels.pruning import PruningError, UnsupportedModelError, find_blocks, find_sublayers
from dsnot_kernels.pruning import distributed as dist_prune
from dsnot_kernels.pruning.coverage import SKIPPED, plan_block
from dsnot_kernels.pruning.experts import find_expert_sets
from dsnot_kernels.objectives.reference import initial_selection

from moe_models import VOCAB, moe_inputs, reference_expert_masks, routed_counts, tiny_moe
from pruning_models import FAMILIES, tiny_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: one thread is faster, and much faster on a loaded machine (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def calib(nsamples=6, seqlen=16, seed=1):
    return torch.randint(0, VOCAB, (nsamples, seqlen), generator=torch.Generator().manual_seed(seed))


def cfg(**kw):
    base = dict(sparsity=0.5, batch_size=4, progress=False)  # batches of 4 and 2 samples
    base.update(kw)
    return dk.PruneConfig(**base)


def prune(model, config, data=None):
    masks = {}
    report = dk.prune_model(model, calib() if data is None else data, config,
                            on_mask=lambda i, n, m: masks.__setitem__((i, n), m.clone()))
    return masks, report


def expert_weights(model):
    """``{(block, name): (rows, cols) view}`` of every expert projection."""
    out = {}
    for i, layer in enumerate(model.model.layers):
        for es in find_expert_sets(layer):
            out.update({(i, n): es.weight(n) for n in es.projections})
    return out


def prunable_zeros(model):
    zeros = total = 0
    for layer in model.model.layers:
        plan = plan_block(layer)
        ws = [m.weight for m in plan.dense.values()] + [es.weight(n) for es in plan.experts for n in es.projections]
        zeros += sum(int((w == 0).sum()) for w in ws)
        total += sum(w.numel() for w in ws)
    return zeros, total


@pytest.mark.parametrize("sparsity", [0.5, 0.6])
def test_mixtral_reproduction_prunes_every_expert(sparsity):
    model = tiny_moe("mixtral")
    routers = [layer.mlp.gate.weight.clone() for layer in model.model.layers]
    _, report = prune(model, cfg(sparsity=sparsity))
    experts = expert_weights(model)
    assert len(experts) == 2 * 4 * 2  # blocks x experts x (gate_up, down)
    for key, W in experts.items():
        assert ((W == 0).sum(1) == int(W.shape[1] * sparsity)).all(), key
    for layer, r in zip(model.model.layers, routers):
        assert torch.equal(layer.mlp.gate.weight, r)  # routers are never pruned
    zeros, total = prunable_zeros(model)
    assert report["prunable_weights"] == total
    assert report["pruned_weights"] == zeros and report["sparsity"] == zeros / total
    assert set(report["skipped"].values()) == {"router"}
    assert torch.isfinite(model(input_ids=calib()).logits).all()


def test_mixtral_24_per_expert_row():
    model = tiny_moe("mixtral")
    prune(model, cfg(pattern="2:4", objective="swap", skip="none"))
    for key, W in expert_weights(model).items():
        assert dk.nm_violations(W, 2, 4) == [], key


def _check_reference(family, config, mode="routed", blocks=(0, 1)):
    """Every expert mask (and written weights) equals the standalone reference, block by block."""
    model = tiny_moe(family)
    dense = copy.deepcopy(model)
    masks, report = prune(model, config)
    for i in blocks:
        mix = copy.deepcopy(dense)  # pruned blocks before i, dense from i on: block i's statistics inputs
        for j in range(i):
            mix.model.layers[j].load_state_dict(model.model.layers[j].state_dict())
        mlp = mix.model.layers[i].mlp
        batches = moe_inputs(mix, calib(), config.batch_size, i)
        ref = reference_expert_masks(mlp, batches, config, mode)
        if mode == "routed":  # the hooks saw exactly the routed tokens (nn.ModuleList experts included)
            assert report["blocks"][i]["experts"][0]["tokens"] == routed_counts(mlp, batches, 4)
        assert len(ref) == len([k for k in masks if k[0] == i and ".experts." in k[1]])
        written = expert_weights(model)
        for name, (mask, new_w) in ref.items():
            assert torch.equal(masks[(i, name)], mask), (i, name)
            if new_w is not None:
                assert torch.equal(written[(i, name)], torch.where(mask, 0.0, new_w)), (i, name)
    return model, report


@pytest.mark.parametrize("family,kw", [
    ("mixtral", dict(objective="dsnot")),
    ("mixtral", dict(objective="swap", expert_group_size=3)),  # two statistics passes per block
    ("mixtral", dict(initial="sparsegpt", refine=False, pattern="2:4")),
    ("qwen3_moe", dict(objective="swap", sparsity=0.6)),
    ("linear_experts", dict(objective="dsnot", pattern="2:4")),
    ("linear_experts", dict(objective="swap", expert_group_size=2)),
])
def test_masks_equal_standalone_expert_on_routed_tokens(family, kw):
    _check_reference(family, cfg(skip="none", **kw))


@pytest.mark.parametrize("kw", [dict(objective="mse"), dict(objective="cov_window", window=3),
                                dict(initial="magnitude"), dict(initial="sparsegpt_metric", objective="cov")])
def test_every_objective_and_initial_method_per_expert(kw):
    _check_reference("mixtral", cfg(skip="none", **kw), blocks=(0,))


def test_reconstruct_per_expert():
    model, report = _check_reference("mixtral", cfg(skip="none", reconstruct=True), blocks=())
    entries = [e for e in report["sublayers"] if "expert" in e]
    assert entries and all("reconstruct" in e for e in entries)
    assert report["sparsity"] == prunable_zeros(model)[0] / report["prunable_weights"]


def test_expert_tokens_all_sends_every_token_to_every_expert():
    model, report = _check_reference("mixtral", cfg(skip="none", expert_tokens="all"), mode="all", blocks=(0,))
    assert report["blocks"][0]["experts"][0]["tokens"] == [6 * 16] * 4


@pytest.mark.parametrize("family", ["olmoe", "qwen2_moe", "deepseek_v3", "gpt_oss"])
def test_other_families_prune_every_expert_and_shared_expert(family):
    model = tiny_moe(family)
    kept = {n: p.clone() for n, p in model.named_parameters() if any(k in n for k in ("gate.", "router", "bias"))}
    _, report = prune(model, cfg(sparsity=0.6, objective="swap", skip="none"))
    experts = expert_weights(model)
    assert experts
    for key, W in experts.items():
        assert ((W == 0).sum(1) == int(W.shape[1] * 0.6)).all(), key
    for name, p in model.named_parameters():
        if name in kept:
            assert torch.equal(p, kept[name]), name
    zeros, total = prunable_zeros(model)
    assert report["sparsity"] == zeros / total and zeros == report["pruned_weights"]
    if family in ("qwen2_moe", "deepseek_v3"):  # a shared expert is an ordinary MLP
        names = {e["name"] for e in report["sublayers"]}
        assert any("shared_expert" in n and n.endswith("down_proj") for n in names)
    logits = model(input_ids=calib()).logits
    assert torch.isfinite(logits).all()


def test_save_model_round_trip(tmp_path):
    import transformers as tf
    from dsnot_kernels.models import save_model
    model = tiny_moe("qwen3_moe")
    prune(model, cfg(pattern="2:4"))
    path = save_model(model, None, tmp_path / "out")
    back = tf.AutoModelForCausalLM.from_pretrained(str(path)).eval()
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = calib()
    assert torch.equal(model(input_ids=ids).logits, back(input_ids=ids).logits)


def _exclude_expert(model, e):
    """Make every Mixtral router choose among the other experts (expert e gets no token)."""
    def hook(module, args, out):
        logits = out[0].clone()
        logits[:, e] = float("-inf")
        probs = torch.softmax(logits.float(), dim=-1)
        top, idx = torch.topk(probs, module.top_k, dim=-1)
        return out[0], top / top.sum(-1, keepdim=True), idx
    for layer in model.model.layers:
        layer.mlp.gate.register_forward_hook(hook)


def test_zero_token_expert_falls_back_to_magnitude_and_is_reported():
    model = tiny_moe("mixtral")
    _exclude_expert(model, 3)
    dense = {k: W.clone() for k, W in expert_weights(model).items()}
    masks, report = prune(model, cfg(sparsity=0.6, expert_report_tokens=10 ** 6))
    for i in range(2):
        summary = report["blocks"][i]["experts"][0]
        assert summary["tokens"][3] == 0 and min(summary["tokens"][:3]) > 0
        assert sum(summary["tokens"]) == 2 * 6 * 16  # top-2 of every token
        assert summary["fallback"] == [3] and summary["few_tokens"] == 4
        for proj in ("gate_up_proj", "down_proj"):
            name = f"mlp.experts.3.{proj}"
            assert torch.equal(masks[(i, name)], initial_selection(dense[(i, name)].abs(), 0.6, 0, 0))
    entries = [e for e in report["sublayers"] if e.get("expert") == 3]
    assert len(entries) == 4 and all(e["fallback"] == "magnitude" and e["tokens"] == 0 for e in entries)


def test_zero_token_expert_error_policy_and_threshold():
    model = tiny_moe("mixtral")
    _exclude_expert(model, 1)
    before = {k: W.clone() for k, W in expert_weights(model).items()}
    with pytest.raises(PruningError, match="expert 1 of mlp.experts got 0 calibration token"):
        prune(model, cfg(expert_fallback="error"))
    after = expert_weights(model)
    assert all(torch.equal(after[(0, n)], W) for (i, n), W in before.items() if i == 0)  # block 0 untouched
    model = tiny_moe("mixtral")
    _, report = prune(model, cfg(expert_min_tokens=10 ** 6))  # every expert under the threshold
    assert report["blocks"][0]["experts"][0]["fallback"] == [0, 1, 2, 3]


def test_expert_tokens_all_refused_for_module_list_experts_before_any_work():
    model = tiny_moe("linear_experts")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match='expert_tokens="all" needs fused experts; mlp.experts'):
        dk.prune_model(model, calib(), cfg(expert_tokens="all"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family", ["mixtral", "linear_experts"])
def test_owl_profile_refused_on_experts_before_any_work(family):
    """OWL's ratios come from a dense pass over the blocks' ordinary linear layers; on a MoE model
    they would leave out the experts, so the profile is refused, not silently computed without them."""
    model = tiny_moe(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match='sparsity_profile="owl" on a mixture-of-experts model'):
        dk.prune_model(model, calib(), cfg(sparsity_profile="owl"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    report = dk.prune_model(model, calib(), cfg(sparsity_profile=[0.5, 0.6]))  # a per-block list works
    experts = [e for e in report["sublayers"] if "expert" in e]
    assert experts and {e["block"] for e in experts} == {0, 1}
    for e in report["sublayers"]:  # experts too get their block's sparsity
        want = [0.5, 0.6][e["block"]]
        assert e["target_sparsity"] == want and want - 1 / e["shape"][1] < e["sparsity"] <= want, e["name"]


def test_unknown_block_weight_is_an_error_before_any_work():
    model = tiny_model("llama")
    model.model.layers[1].self_attn.extra = nn.Parameter(torch.randn(8, 64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedModelError, match=r"model\.layers\.1\.self_attn\.extra \(8, 64\)"):
        dk.prune_model(model, calib(), cfg())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model = tiny_model("llama")
    model.model.layers[0].mlp.weird = nn.Parameter(torch.randn(2, 8, 64))  # 3-D, not a known experts layout
    with pytest.raises(UnsupportedModelError, match="mlp.weird"):
        dk.prune_model(model, calib(), cfg())


def test_experts_layout_that_lies_is_an_error():
    model = tiny_moe("mixtral")
    model.config._experts_implementation = "eager"  # eager runs act_fn(gate) * up itself
    mlp = model.model.layers[0].mlp
    mlp.experts._apply_gate = lambda y: torch.relu(y[..., :128]) * y[..., 128:]
    with pytest.raises(PruningError, match="differs from layout"):
        prune(model, cfg())
    assert not mlp.experts._forward_pre_hooks and not mlp.experts._forward_hooks  # no hook left behind


@pytest.mark.parametrize("kw", [dict(expert_tokens="some"), dict(expert_fallback="wanda"), dict(expert_min_tokens=0),
                                dict(expert_group_size=0), dict(expert_report_tokens=-1), dict(expert_group_size=True)])
def test_expert_options_are_checked(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        dk.PruneConfig(**kw)


@pytest.mark.parametrize("family", FAMILIES)
def test_supported_families_have_nothing_unknown(family):
    model = tiny_model(family)
    for layer in find_blocks(model)[1]:
        plan = plan_block(layer)
        assert plan.experts == [] and plan.skipped == {}
        assert plan.dense.keys() == find_sublayers(layer).keys()
    assert set(SKIPPED) == {"router", "expert_bias", "embedding", "norm"}


MOE_DIST_CASES = [("mixtral", dict(objective="dsnot")),
                  ("mixtral", dict(objective="swap", pattern="2:4", expert_group_size=3)),
                  ("qwen3_moe", dict(initial="sparsegpt", refine=False)),
                  ("linear_experts", dict(objective="swap"))]


def dist_case(family, kw):
    """(masks, state) of one prune: 7 samples in batches of 2, every sub-layer refined."""
    model = tiny_moe(family)
    masks, _ = prune(model, cfg(skip="none", batch_size=2, **kw), data=calib(nsamples=7))
    return masks, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(tmp_path):
    """Every expert's mask and weight under 2 gloo ranks (tests/moe_dist_worker.py) equal one process's."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path
    here = Path(__file__).resolve().parent
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here.parent), str(here)]), OMP_NUM_THREADS="1",
               MASTER_PORT=str(port), WORLD_SIZE="2")
    procs = [subprocess.Popen([sys.executable, str(here / "moe_dist_worker.py"), str(tmp_path)],
                              env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for r in range(2):
        assert procs[r].returncode == 0, logs[r]
    for n, (family, kw) in enumerate(MOE_DIST_CASES):
        masks, state = dist_case(family, kw)
        for r in range(2):
            dmasks, dstate = torch.load(tmp_path / f"{n}-{r}.pt", weights_only=False)
            assert dmasks.keys() == masks.keys()
            assert all(torch.equal(dmasks[k], masks[k]) for k in masks), (family, kw, r)
            assert all(torch.equal(dstate[k], state[k]) for k in state), (family, kw, r)


# The family table's four configurations (tests/test_families.py) on the two MoE families it names:
# every prunable weight, expert tensors included, at the asked zeros; finite logits; a save round trip.
from test_families import CONFIGS as FAMILY_CONFIGS, FAST as FAMILY_FAST, check_zeros  # noqa: E402

MOE_FAMILY_CASES = [pytest.param(f, c, marks=() if c in FAMILY_FAST else pytest.mark.slow)
                    for f in ("mixtral", "qwen3_moe") for c in FAMILY_CONFIGS]


@pytest.mark.parametrize("family,name", MOE_FAMILY_CASES)
def test_moe_family_table_configurations(family, name, tmp_path):
    import transformers as tf
    from dsnot_kernels.models import save_model
    model = tiny_moe(family)
    config = cfg(batch_size=2, **FAMILY_CONFIGS[name])
    _, report = prune(model, config, data=calib(nsamples=4, seqlen=24))
    weights = 0
    for layer in model.model.layers:
        plan = plan_block(layer)
        for m in plan.dense.values():
            check_zeros(m.weight, config)
            weights += 1
        for es in plan.experts:
            for n in es.projections:
                check_zeros(es.weight(n), config)
                weights += 1
    assert weights > 0 and weights == len(report["sublayers"])
    zeros, total = prunable_zeros(model)
    assert report["pruned_weights"] == zeros and report["prunable_weights"] == total
    assert torch.isfinite(model(input_ids=calib()).logits).all()
    path = save_model(model, None, tmp_path / family)
    back = tf.AutoModelForCausalLM.from_pretrained(str(path)).eval()
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
