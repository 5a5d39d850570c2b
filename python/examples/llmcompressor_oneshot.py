"""llm-compressor users: DSnoT as a ``oneshot`` recipe modifier (``DSnoTModifier``).

Needs llm-compressor, which pins its own transformers, so it lives in a second venv:

    make llmcompressor-venv                                   # .venv-llmc (requirements-llmcompressor.txt)
    PYTHONPATH=. .venv-llmc/bin/python python/examples/llmcompressor_oneshot.py             # seconds
    PYTHONPATH=. .venv-llmc/bin/python python/examples/llmcompressor_oneshot.py --embedded  # SmolLM2, minutes

Default: a tiny 2-layer Llama made from a config, saved with the embedded model's tokenizer
(``oneshot`` reads the config from ``model.config.name_or_path``), pruned 2:4 by ``oneshot`` with
``DSnoTModifier`` given both as an instance and as a YAML recipe; the masks are checked against
``dsnot_kernels.prune_model`` on the same samples. ``--embedded``: the embedded SmolLM2-135M at 50 %
unstructured, perplexity dense / Wanda (``refine=False``) / DSnoT, with calibration and evaluation
windows under the BOS rule ``--bos auto|always|never`` (docs/MODELS.md; printed with the figures).

What the result is: a dense checkpoint with zeros (compressed-tensors dropped its sparse formats
after 0.14, and vLLM no longer serves 2:4 sparse checkpoints). For 2:4 speed-ups load it on an
sm80+ GPU in fp16/bf16 and call ``dsnot_kernels.to_sparse_24(model)`` (or PyTorch's
``torch.sparse.to_sparse_semi_structured`` per weight).
"""
import argparse
import importlib.util
import os
import sys
import tempfile
import time

import torch

RECIPE = """
dsnot_stage:
  sparsity_modifiers:
    DSnoTModifier:
      sparsity: 0.5
      mask_structure: "2:4"
      objective: dsnot
      skip: mlp
"""


def calibration_dataset(ids):
    from datasets import Dataset
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})


def run_oneshot(folder, tokenizer, ids, recipe):
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    oneshot(model=model, processor=tokenizer, dataset=calibration_dataset(ids), recipe=recipe,
            num_calibration_samples=ids.shape[0], max_seq_length=ids.shape[1],
            shuffle_calibration_samples=False)
    return model


def zero_masks(model):
    return {n: m.weight == 0 for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}


def tiny(tokenizer, workdir):
    import dsnot_kernels as dk
    from dsnot_kernels.integrations.llmcompressor import DSnoTModifier
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    folder = os.path.join(workdir, "tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ids = torch.randint(0, cfg.vocab_size, (8, 32))

    modifier = DSnoTModifier(sparsity=0.5, mask_structure="2:4", objective="dsnot", skip="mlp")
    pruned = run_oneshot(folder, tokenizer, ids, [modifier])
    from_yaml = run_oneshot(folder, tokenizer, ids, RECIPE)

    # llm-compressor calibrates with eager attention; so does the reference, for bit-identical inputs
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    expected = {}
    dk.prune_model(reference, ids, dk.PruneConfig(pattern="2:4", batch_size=1, progress=False),
                   on_mask=lambda b, n, mask: expected.__setitem__(f"model.layers.{b}.{n}", mask))
    got, yaml_got = zero_masks(pruned), zero_masks(from_yaml)
    same = all(torch.equal(got[n], expected[n]) and torch.equal(yaml_got[n], expected[n]) for n in expected)
    print(f"{'module':34s} {'refined':>7s} {'swaps':>6s} {'sparsity':>8s}")
    for e in modifier.report:
        print(f"{e['name']:34s} {str(e['refined']):>7s} {e['swaps']:6d} {e['sparsity']:8.3f}")
    print("2:4 violations:", sum(len(dk.nm_violations(m, n=2, m=4)) for m in got.values()))
    print("masks identical to prune_model:", same)
    if not same:
        sys.exit(1)

    out = os.path.join(workdir, "pruned")
    pruned.save_pretrained(out)   # dense safetensors with zeros
    print("save_pretrained wrote a dense checkpoint with the zeros in place (a temporary folder here)")
    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0):
        pruned = pruned.half().cuda()
        dk.to_sparse_24(pruned)
        print("linear layers now use 2:4 semi-structured sparse weights")
    else:
        print("no sm80+ GPU here: dk.to_sparse_24(model) would turn the 2:4 layers into sparse tensor-core weights")


def embedded(tokenizer, workdir, bos="auto"):
    import dsnot_kernels as dk
    from dsnot_kernels.data import calibration_windows, default_texts, tokenize
    from dsnot_kernels.integrations.llmcompressor import DSnoTModifier
    from dsnot_kernels.models import load_embedded, save_model
    from transformers import AutoModelForCausalLM

    model, tok = load_embedded()
    folder = os.path.join(workdir, "smollm2")
    save_model(model, tok, folder)
    from dsnot_kernels.bos import resolve_bos
    calib_text, eval_text = default_texts()
    rule = resolve_bos(bos, tokenizer=tok, model=model)
    bos_kw = dict(bos=bos, tokenizer=tok, bos_token_id=rule.bos_token_id)
    print(f"windows: {rule.describe()}")
    ids = calibration_windows(tokenize(tok, calib_text), 32, 128, seed=0, **bos_kw)
    eval_ids = tokenize(tok, eval_text)
    dense = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    rows = [("dense", dense, 0.0)]
    for label, modifier in (("wanda (refine=False)", DSnoTModifier(sparsity=0.5, refine=False)),
                            ("dsnot", DSnoTModifier(sparsity=0.5))):
        t0 = time.perf_counter()
        rows.append((label, run_oneshot(folder, tok, ids, [modifier]), time.perf_counter() - t0))
    for label, m, seconds in rows:
        print(f"{label:22s} perplexity {dk.perplexity(m, eval_ids, 256, max_windows=32, **bos_kw):8.3f}   oneshot {seconds:6.1f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedded", action="store_true", help="prune the embedded SmolLM2-135M (minutes)")
    parser.add_argument("--bos", default="auto", choices=["auto", "always", "never"],
                        help="with --embedded: windows start with BOS (auto: where the tokenizer adds one)")
    args = parser.parse_args()
    if importlib.util.find_spec("llmcompressor") is None:
        print("llm-compressor is not installed in this environment; this example needs its own venv "
              "(make llmcompressor-venv, then run it with .venv-llmc/bin/python). Skipped.")
        print("done")
        return
    from transformers import AutoTokenizer

    from dsnot_kernels.models import embedded_model_file
    folder, name = embedded_model_file()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=name)
    with tempfile.TemporaryDirectory() as workdir:
        if args.embedded:
            embedded(tokenizer, workdir, args.bos)
        else:
            tiny(tokenizer, workdir)
    print("done")


if __name__ == "__main__":
    main()
