"""``DSnoTModifier`` against the real llm-compressor (``make test-llmcompressor``: its own venv, .venv-llmc).

Where llmcompressor is not importable (the main venv pins a transformers it does not accept), every
case that needs it skips; the import-isolation cases run everywhere.

What is compared, on a tiny Llama made from a config (saved with the embedded model's tokenizer,
since ``oneshot`` reads the config from ``model.config.name_or_path``):

* ``DSnoTModifier(refine=False)`` vs llm-compressor's own ``WandaPruningModifier``: the same masks,
  bit for bit. Their statistics differ only in rounding (theirs: a running mean over batches of all
  tokens; ours: per sample), and with these inputs no metric sits within rounding of a row's
  threshold, so the masks are equal (asserted exactly).
* With refinement vs ``dsnot_kernels.prune_model`` on the same calibration samples and config: the
  same masks, bit for bit. The pipelines agree on the order of work: llm-compressor's sequential
  pipeline calibrates one decoder layer on unpruned weights, prunes it, then propagates the pruned
  layer's outputs to the next layer (``propagate_error=True``, its default), as ``prune_model``
  does; both feed ``CalibrationStats`` per sample. Calibration is not shuffled
  (``shuffle_calibration_samples=False``), both run the same batch size, and ``prune_model`` runs
  the model with eager attention, which llm-compressor forces during calibration
  (``calibration_forward_context``); so each layer sees bit-identical inputs. (With SDPA on the
  ``prune_model`` side, the embedded model's hidden states differ from layer 0's attention on by
  float rounding, ~1e-6, and masks start to differ around layer 22; perplexity agreed to 0.01 %.)
"""
import copy
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import dsnot_kernels as dk

HAVE_LLMC = importlib.util.find_spec("llmcompressor") is not None
needs_llmc = pytest.mark.skipif(not HAVE_LLMC, reason="llmcompressor not installed (make test-llmcompressor)")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NSAMPLES, SEQLEN = 8, 32


def _run_python(code, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, **env), timeout=300)


# -- import isolation (every environment) --------------------------------------------------------
def test_import_dsnot_kernels_does_not_import_llmcompressor():
    proc = _run_python("""
        import sys, dsnot_kernels, dsnot_kernels.integrations
        assert "llmcompressor" not in sys.modules and "compressed_tensors" not in sys.modules, sorted(sys.modules)
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_clear_import_error_without_llmcompressor():
    proc = _run_python("""
        import sys
        sys.modules["llmcompressor"] = None   # as if not installed
        try:
            import dsnot_kernels.integrations.llmcompressor
        except ImportError as err:
            print(err)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "needs llm-compressor" in proc.stdout and "pip install llmcompressor" in proc.stdout, proc.stdout


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llmc():
    if not HAVE_LLMC:
        pytest.skip("llmcompressor not installed (make test-llmcompressor)")
    import llmcompressor
    from llmcompressor.modifiers.pruning import WandaPruningModifier

    from dsnot_kernels.integrations.llmcompressor import DSnoTModifier
    return llmcompressor, WandaPruningModifier, DSnoTModifier


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from dsnot_kernels.models import embedded_model_file
    folder, name = embedded_model_file()
    return AutoTokenizer.from_pretrained(str(folder), gguf_file=name)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer, llmc):
    """(folder, calibration ids (NSAMPLES, SEQLEN)) of a 2-layer Llama saved with a tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ids = torch.randint(0, cfg.vocab_size, (NSAMPLES, SEQLEN), generator=torch.Generator().manual_seed(1))
    return str(folder), ids


def _load(folder, attn="sdpa"):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=attn).eval()


def _dataset(ids):
    from datasets import Dataset
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})


def _masks(model):
    """{full name: (rows, cols) bool, True = zero} of every decoder linear layer (lm_head excluded)."""
    return {n: (m.weight == 0).clone() for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n != "lm_head"}


def _oneshot(model, tokenizer, ids, recipe, batch_size=1):
    from llmcompressor import oneshot
    oneshot(model=model, processor=tokenizer, dataset=_dataset(ids), recipe=recipe,
            num_calibration_samples=ids.shape[0], max_seq_length=ids.shape[1],
            shuffle_calibration_samples=False, batch_size=batch_size)
    return model


def _prune_model_masks(model, ids, **config):
    masks = {}
    dk.prune_model(model, ids, dk.PruneConfig(progress=False, **config),
                   on_mask=lambda block, name, mask: masks.__setitem__(f"model.layers.{block}.{name}", mask.clone()))
    return masks


def _diff(a, b):
    assert a.keys() == b.keys()
    return {n: int((a[n] != b[n]).sum()) for n in a if bool((a[n] != b[n]).any())}


STRUCTURES = [("0:0", "unstructured"), ("2:4", "2:4")]


def _check_pattern(masks, structure, sparsity=0.5):
    for name, mask in masks.items():
        if structure == "2:4":
            assert dk.nm_violations(mask, n=2, m=4) == [], name
        else:
            assert (mask.sum(1) == int(mask.shape[1] * sparsity)).all(), name


# -- parity with llm-compressor's Wanda ----------------------------------------------------------------
@pytest.mark.parametrize("structure,pattern", STRUCTURES)
def test_refine_false_equals_llmcompressor_wanda(llmc, tiny, tokenizer, structure, pattern):
    _, Wanda, DSnoT = llmc
    folder, ids = tiny
    theirs = _masks(_oneshot(_load(folder), tokenizer, ids,
                             [Wanda(sparsity=0.5, mask_structure=structure, ignore=["re:.*lm_head"])]))
    modifier = DSnoT(sparsity=0.5, mask_structure=structure, refine=False)
    ours = _masks(_oneshot(_load(folder), tokenizer, ids, [modifier]))
    assert _diff(ours, theirs) == {}
    _check_pattern(ours, structure)
    assert len(modifier.report) == 14 and all(e["swaps"] == 0 and not e["refined"] for e in modifier.report)
    assert all(e["nsamples"] == NSAMPLES for e in modifier.report)


# -- parity with prune_model -------------------------------------------------------------------------------
@pytest.mark.parametrize("structure,pattern", STRUCTURES)
@pytest.mark.parametrize("objective,skip", [("dsnot", "mlp"), ("cov_window", "mlp"), ("dsnot", "none"),
                                            ("mse", "mlp"), ("cov", "none")])
def test_refined_equals_prune_model(llmc, tiny, tokenizer, structure, pattern, objective, skip):
    _, _, DSnoT = llmc
    folder, ids = tiny
    options = dict(objective=objective, skip=skip, window=8 if objective == "cov_window" else 100)
    modifier = DSnoT(sparsity=0.5, mask_structure=structure, **options)
    ours = _masks(_oneshot(_load(folder), tokenizer, ids, [modifier]))
    expected = _prune_model_masks(_load(folder, "eager"), ids, sparsity=0.5, pattern=pattern, batch_size=1, **options)
    assert _diff(ours, expected) == {}
    _check_pattern(ours, structure)
    # the refinement did something, and only where skip allows it
    swapped = {e["name"] for e in modifier.report if e["swaps"] > 0}
    refined = {e["name"] for e in modifier.report if e["refined"]}
    assert swapped <= refined and any(".self_attn." in n for n in swapped), swapped
    assert any(".mlp." in n for n in refined) == (skip == "none"), refined
    assert any(".mlp." in n for n in swapped) == (skip == "none"), swapped
    # layer 0's statistics come from the dense model, so its masks differ from Wanda's exactly where refined
    wanda = _prune_model_masks(_load(folder, "eager"), ids, sparsity=0.5, pattern=pattern, refine=False, batch_size=1)
    changed = {n for n in _diff(ours, wanda) if ".layers.0." in n}
    assert changed == {n for n in swapped if ".layers.0." in n}


def test_batched_calibration_is_fed_per_sample(llmc, tiny, tokenizer):
    """oneshot batch_size=4: each (4, T, C) hook input counts as 4 samples, as prune_model's batches do."""
    _, _, DSnoT = llmc
    folder, ids = tiny
    modifier = DSnoT(sparsity=0.5)
    ours = _masks(_oneshot(_load(folder), tokenizer, ids, [modifier], batch_size=4))
    assert _diff(ours, _prune_model_masks(_load(folder, "eager"), ids, sparsity=0.5, batch_size=4)) == {}
    assert all(e["nsamples"] == NSAMPLES for e in modifier.report)


def _initial_methods():
    from dsnot_kernels.pruning import config
    return [m for m in config.INITIAL_METHODS if m != "wanda"]   # whatever PruneConfig accepts today


@pytest.mark.parametrize("initial", _initial_methods())
def test_other_initial_methods_give_prune_model_weights(llmc, tiny, tokenizer, initial):
    """Every other initial method: the same weights as prune_model (masks, and any updated kept weights)."""
    _, _, DSnoT = llmc
    folder, ids = tiny
    ours = _oneshot(_load(folder), tokenizer, ids, [DSnoT(sparsity=0.6, initial=initial)])
    theirs = _load(folder, "eager")
    dk.prune_model(theirs, ids, dk.PruneConfig(sparsity=0.6, initial=initial, batch_size=1, progress=False))
    assert _diff(_masks(ours), _masks(theirs)) == {}
    for name, module in ours.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            assert torch.equal(module.weight, theirs.get_submodule(name).weight), name
    if initial == "sparsegpt":   # SparseGPT as published picks per column block, not per row
        assert all(abs(float(m.float().mean()) - 0.6) < 0.01 for m in _masks(ours).values())
    else:
        _check_pattern(_masks(ours), "0:0", 0.6)


@pytest.mark.parametrize("structure,pattern,objective", [("0:0", "unstructured", "dsnot"), ("2:4", "2:4", "cov")])
def test_reconstruct_gives_prune_model_weights(llmc, tiny, tokenizer, structure, pattern, objective):
    """reconstruct=True: prune_model's masks and re-solved kept weights; layer 0's masks are those of
    reconstruct=False (later layers see the reconstructed outputs), and the kept weights change."""
    _, _, DSnoT = llmc
    folder, ids = tiny
    options = dict(objective=objective, skip="none")
    modifier = DSnoT(sparsity=0.6, mask_structure=structure, reconstruct=True, **options)
    ours = _oneshot(_load(folder), tokenizer, ids, [modifier])
    theirs = _load(folder, "eager")
    dk.prune_model(theirs, ids, dk.PruneConfig(sparsity=0.6, pattern=pattern, reconstruct=True, batch_size=1,
                                               progress=False, **options))
    plain = _oneshot(_load(folder), tokenizer, ids, [DSnoT(sparsity=0.6, mask_structure=structure, **options)])
    assert _diff(_masks(ours), _masks(theirs)) == {}
    first = lambda masks: {n: m for n, m in masks.items() if n.startswith("model.layers.0.")}  # noqa: E731
    assert first(_masks(ours)) and _diff(first(_masks(ours)), first(_masks(plain))) == {}
    _check_pattern(_masks(ours), structure, 0.6)
    changed = 0
    for name, module in ours.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            assert torch.equal(module.weight, theirs.get_submodule(name).weight), name
            changed += not torch.equal(module.weight, plain.get_submodule(name).weight)
    assert changed == len(_masks(ours))
    assert modifier.report and all(e["reconstruct"]["converged"] for e in modifier.report)


def test_per_layer_sparsities_like_wanda(llmc, tiny, tokenizer):
    """targets = decoder layers with one sparsity each (what OWL produces), as llm-compressor's Wanda."""
    _, Wanda, DSnoT = llmc
    folder, ids = tiny
    kw = dict(sparsity=[0.4, 0.7], targets=["LlamaDecoderLayer"])
    theirs = _masks(_oneshot(_load(folder), tokenizer, ids, [Wanda(ignore=["re:.*lm_head"], **kw)]))
    ours = _masks(_oneshot(_load(folder), tokenizer, ids, [DSnoT(refine=False, **kw)]))
    assert _diff(ours, theirs) == {}
    for name, mask in ours.items():
        s = 0.4 if ".layers.0." in name else 0.7
        assert (mask.sum(1) == int(mask.shape[1] * s)).all(), name


@pytest.mark.parametrize("refine", [False, True])
def test_owl_profile_equals_prune_model_owl(llmc, tiny, tokenizer, refine):
    """sparsity_profile="owl" (llm-compressor's option names), computed by dsnot_kernels: the layer
    sparsities and the masks of prune_model(PruneConfig(sparsity_profile="owl"))."""
    _, _, DSnoT = llmc
    folder, ids = tiny
    modifier = DSnoT(sparsity=0.6, sparsity_profile="owl", owl_m=2, owl_lmbda=0.05, refine=refine)
    ours = _masks(_oneshot(_load(folder), tokenizer, ids, [modifier]))
    masks = {}
    report = dk.prune_model(_load(folder), ids, dk.PruneConfig(
        sparsity=0.6, sparsity_profile="owl", owl_m=2.0, owl_lambda=0.05, refine=refine, progress=False),
        on_mask=lambda block, name, mask: masks.__setitem__(f"model.layers.{block}.{name}", mask.clone()))
    want = report["sparsity_profile"]
    assert list(modifier.owl["sparsity"]) == ["model.layers.0", "model.layers.1"]
    assert list(modifier.owl["outlier_ratios"].values()) == pytest.approx(want["outlier_ratios"], rel=1e-9)
    assert list(modifier.owl["sparsity"].values()) == pytest.approx(want["block_sparsity"], abs=1e-12)
    assert want["block_sparsity"][0] != want["block_sparsity"][1]
    assert _diff(ours, masks) == {}


def test_owl_profile_refuses_n_m(llmc, tiny, tokenizer):
    _, _, DSnoT = llmc
    folder, ids = tiny
    with pytest.raises(Exception, match="unstructured"):
        _oneshot(_load(folder), tokenizer, ids, [DSnoT(sparsity=0.5, mask_structure="2:4", sparsity_profile="owl",
                                                       owl_m=2, owl_lmbda=0.05)])


def test_yaml_recipe_names_the_modifier(llmc, tiny, tokenizer):
    _, _, DSnoT = llmc
    folder, ids = tiny
    recipe = textwrap.dedent("""
        dsnot_stage:
          sparsity_modifiers:
            DSnoTModifier:
              sparsity: 0.5
              mask_structure: "2:4"
              objective: cov_window
              window: 8
    """)
    from_yaml = _masks(_oneshot(_load(folder), tokenizer, ids, recipe))
    direct = _masks(_oneshot(_load(folder), tokenizer, ids,
                             [DSnoT(sparsity=0.5, mask_structure="2:4", objective="cov_window", window=8)]))
    assert _diff(from_yaml, direct) == {}
    _check_pattern(from_yaml, "2:4")


def test_output_dir_saves_dense_zeros_and_a_recipe_that_reloads(llmc, tiny, tokenizer, tmp_path):
    """oneshot(output_dir=...) writes a dense checkpoint with the zeros and a recipe.yaml naming us."""
    from llmcompressor import oneshot
    from llmcompressor.recipe import Recipe
    _, _, DSnoT = llmc
    folder, ids = tiny
    modifier = DSnoT(mask_structure="2:4", objective="cov_window", window=5, skip="none")
    model = _load(folder)
    oneshot(model=model, processor=tokenizer, dataset=_dataset(ids), recipe=[modifier], output_dir=str(tmp_path),
            num_calibration_samples=ids.shape[0], max_seq_length=ids.shape[1], shuffle_calibration_samples=False)
    reloaded = _masks(_load(str(tmp_path)))
    assert _diff(reloaded, _masks(model)) == {}
    _check_pattern(reloaded, "2:4")
    (again,) = Recipe.create_instance(str(tmp_path / "recipe.yaml")).modifiers
    assert type(again) is DSnoT
    fields = ("mask_structure", "objective", "window", "skip", "initial", "refine", "ignore", "max_cycle_time")
    assert {f: getattr(again, f) for f in fields} == {f: getattr(modifier, f) for f in fields}


def test_disk_offloaded_model_gets_the_same_masks(llmc, tiny, tokenizer, tmp_path):
    from compressed_tensors.offload import offload_module
    from compressed_tensors.offload.cache import OffloadCache
    _, _, DSnoT = llmc
    folder, ids = tiny
    offloaded = _load(folder)
    for name, module in offloaded.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            offload_module(module, "cpu", "disk", offload_dir=str(tmp_path))
    _oneshot(offloaded, tokenizer, ids, [DSnoT(sparsity=0.5)])
    assert isinstance(offloaded.model.layers[0].self_attn.q_proj._parameters, OffloadCache)
    in_memory = _masks(_oneshot(_load(folder), tokenizer, ids, [DSnoT(sparsity=0.5)]))
    assert _diff(_masks(offloaded), in_memory) == {}
    _check_pattern(in_memory, "0:0")


# -- validation: llm-compressor's (pydantic) errors, naming the field ------------------------------------
@pytest.mark.parametrize("field,value,words", [
    ("objective", "bogus", "objective must be one of"),
    ("initial", "random", "initial must be one of"),
    ("skip", "attn", "skip must be one of"),
    ("window", 0, "window must be an int >= 1"),
    ("max_cycle_time", -1, "max_cycle_time must be >= 0"),
    ("backend", "gpu", "unknown backend"),
    ("mask_structure", "2-4", "mask_structure must be"),
    ("mask_structure", "4:2", "N:M pattern needs 0 < N < M"),
    ("sparsity", 1.5, "sparsity must be in [0, 1)"),
    ("max_cycles", 3, "Extra inputs are not permitted"),
])
def test_bad_option_is_a_validation_error_naming_the_field(llmc, field, value, words):
    from pydantic import ValidationError
    _, _, DSnoT = llmc
    with pytest.raises(ValidationError) as info:
        DSnoT(**{field: value})
    errors = info.value.errors()
    assert [e["loc"] for e in errors] == [(field,)], errors
    assert words in str(info.value)


def test_bad_option_in_a_yaml_recipe(llmc, tiny, tokenizer):
    from pydantic import ValidationError
    folder, ids = tiny
    recipe = "dsnot_stage:\n  sparsity_modifiers:\n    DSnoTModifier:\n      sparsity: 0.5\n      objective: fastest\n"
    with pytest.raises(ValidationError, match="objective") as info:
        _oneshot(_load(folder), tokenizer, ids, recipe)
    assert [e["loc"] for e in info.value.errors()] == [("objective",)]


def test_valid_choices_come_from_prune_config(llmc):
    """Every objective and initial method PruneConfig accepts is accepted (read at run time)."""
    from dsnot_kernels.pruning import config
    _, _, DSnoT = llmc
    for objective in config.OBJECTIVE_CHOICES:
        assert DSnoT(objective=objective).objective == objective
    for initial in config.INITIAL_METHODS:
        assert DSnoT(initial=initial).initial == initial
    for skip in config.SKIP_CHOICES:
        assert DSnoT(skip=skip).skip == skip


def test_second_moment_only_when_needed(llmc, tiny, tokenizer):
    _, _, DSnoT = llmc
    folder, ids = tiny
    seen = {}
    for objective in ("dsnot", "cov", "reconstruct"):
        modifier = (DSnoT(sparsity=0.5, reconstruct=True) if objective == "reconstruct"
                    else DSnoT(sparsity=0.5, objective=objective))
        original = modifier.compress_modules

        def spy(modifier=modifier, original=original, objective=objective):
            seen[objective] = {s.hessian is not None for s in modifier._stats.values()}
            original()
        object.__setattr__(modifier, "compress_modules", spy)
        _oneshot(_load(folder), tokenizer, ids, [modifier])
    assert seen == {"dsnot": {False}, "cov": {True}, "reconstruct": {True}}


def test_non_linear_target_is_refused(llmc, tmp_path, tokenizer):
    """A Conv target (llm-compressor's base prunes Conv layers too) gets a clear error, not a crash."""
    _, _, DSnoT = llmc
    from llmcompressor.core import State
    modifier = DSnoT(targets=["Conv2d"])
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    modifier._target_layers = {"0": model[0]}
    with pytest.raises(ValueError, match="add it to `ignore`"):
        modifier.on_calibration_start(State(model=model), None)
    assert not modifier._hooks  # no hook left behind


# -- the embedded model ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_embedded_model_perplexity_matches_prune_model(llmc, tokenizer, tmp_path):
    """SmolLM2-135M, 50 % unstructured DSnoT: oneshot's perplexity within 1 % of prune_model's."""
    from dsnot_kernels.data import calibration_windows, default_texts, tokenize
    from dsnot_kernels.models import load_embedded, save_model
    _, _, DSnoT = llmc
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, tok = load_embedded()
    save_model(model, tok, tmp_path / "smollm2")
    calib_text, eval_text = default_texts()
    ids = calibration_windows(tokenize(tok, calib_text), 16, 128, seed=0)
    eval_ids = tokenize(tok, eval_text)

    modifier = DSnoT(sparsity=0.5)
    ours = _oneshot(_load(str(tmp_path / "smollm2")), tok, ids, [modifier])
    theirs = _load(str(tmp_path / "smollm2"), "eager")   # llm-compressor calibrates with eager attention
    dk.prune_model(theirs, ids, dk.PruneConfig(sparsity=0.5, batch_size=1, progress=False))
    theirs.set_attn_implementation(ours.config._attn_implementation)   # evaluate both the same way
    assert _diff(_masks(ours), _masks(theirs)) == {}
    _check_pattern(_masks(ours), "0:0")
    assert len(modifier.report) == 7 * 30 and sum(e["swaps"] for e in modifier.report) > 0
    ppl = {name: dk.perplexity(m, eval_ids, 256, max_windows=16) for name, m in (("oneshot", ours),
                                                                                ("prune_model", theirs))}
    print("perplexity", ppl)
    assert ppl["oneshot"] <= ppl["prune_model"] * 1.01, ppl


def test_example_runs(llmc):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "python", "examples", "llmcompressor_oneshot.py")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "masks identical to prune_model: True" in proc.stdout, proc.stdout[-2000:]
    assert proc.stdout.rstrip().endswith("done")
