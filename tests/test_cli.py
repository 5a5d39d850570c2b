"""dsnot-prune, python -m dsnot_kernels, the authors'-flags python/main.py, and saving."""
import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny Llama with a byte-level BPE tokenizer trained here, saved as a Hugging Face folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from dsnot_kernels.data import pydoc_text

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([pydoc_text()[:20000]], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=128))
    path = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_cli_table_json_plot_save(tiny_dir, tmp_path, capsys):
    from dsnot_kernels.cli import main
    from transformers import AutoModelForCausalLM

    out, png, saved = tmp_path / "r.json", tmp_path / "err.png", tmp_path / "pruned"
    assert main(["--model", str(tiny_dir), "--nsamples", "4", "--seqlen", "32", "--eval-windows", "3",
                 "--objective", "dsnot", "--skip", "none", "--json", str(out), "--plot", str(png), "--save", str(saved),
                 "--quiet", "--backend", "torch"]) == 0
    table = capsys.readouterr().out
    assert "dense" in table and "Wanda + DSnoT" in table
    result = json.loads(out.read_text())
    assert [r["method"] for r in result["rows"]] == ["dense", "Wanda", "Wanda + DSnoT [skip=none]"]
    assert all(r["ppl"] > 1 for r in result["rows"])
    assert "error" in result["reports"][-1]["sublayers"][0]
    assert png.stat().st_size > 1000
    reloaded = AutoModelForCausalLM.from_pretrained(saved)
    w = reloaded.model.layers[0].self_attn.q_proj.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5)
    assert (saved / "model.safetensors").exists()


def test_cli_mse_no_refine(tiny_dir, tmp_path):
    from dsnot_kernels.cli import main

    out = tmp_path / "r.json"
    main(["--model", str(tiny_dir), "--nsamples", "3", "--seqlen", "32", "--eval-windows", "2", "--no-dense",
          "--no-refine", "--pattern", "2:4", "--json", str(out), "--quiet"])
    assert [r["method"] for r in json.loads(out.read_text())["rows"]] == ["Wanda"]
    main(["--model", str(tiny_dir), "--nsamples", "3", "--seqlen", "32", "--eval-windows", "2", "--no-dense",
          "--objective", "mse", "--json", str(out), "--quiet"])
    assert json.loads(out.read_text())["rows"][-1]["method"] == "Wanda + DSnoT (mse) [skip=none]"  # --skip follows the objective
    main(["--model", str(tiny_dir), "--nsamples", "3", "--seqlen", "32", "--eval-windows", "2", "--no-dense",
          "--objective", "cov", "--json", str(out), "--quiet"])
    row = json.loads(out.read_text())["rows"][-1]
    assert row["method"] == "Wanda + DSnoT (cov) [skip=none]"  # --skip follows the objective
    main(["--model", str(tiny_dir), "--nsamples", "3", "--seqlen", "32", "--eval-windows", "2", "--no-dense",
          "--objective", "cov_window", "--window", "4", "--json", str(out), "--quiet"])
    res = json.loads(out.read_text())
    assert res["rows"][-1]["method"] == "Wanda + DSnoT (cov_window) [skip=none]"  # --skip follows the objective
    main(["--model", str(tiny_dir), "--nsamples", "3", "--seqlen", "32", "--eval-windows", "2", "--no-dense",
          "--objective", "swap", "--json", str(out), "--quiet"])
    res = json.loads(out.read_text())
    assert res["rows"][-1]["method"] == "Wanda + DSnoT (swap) [skip=none]" and res["rows"][-1]["swaps"] > 0


def test_python_m_help():
    res = subprocess.run([sys.executable, "-m", "dsnot_kernels", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0
    for flag in ("--model", "--sparsity", "--pattern", "--initial", "--no-refine", "--skip", "--nsamples",
                 "--seqlen", "--calib", "--eval", "--save", "--backend", "--json", "--objective",
                 "--window", "--record-error", "--plot"):
        assert flag in res.stdout


@pytest.mark.parametrize("extra", [[], ["--objective", "cov_window", "--window", "4"], ["--objective", "swap"]],
                         ids=["dsnot", "cov_window", "swap"])
def test_authors_main_flags(tiny_dir, tmp_path, monkeypatch, capsys, extra):
    calib = tmp_path / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    results, saved = tmp_path / "results.txt", tmp_path / "saved"
    monkeypatch.setattr(sys, "argv", [
        "main.py", "--model", str(tiny_dir), "--prune_method", "DSnoT", "--initial_method", "wanda",
        "--sparsity_ratio", "0.5", "--sparsity_type", "unstructured", "--nsamples", "4",
        "--max_cycle_time", "50", "--update_threshold", "0.1", "--pow_of_var_regrowing", "1",
        "--skip_layer", "no_skip", "--save_model", str(saved), "--seed", "0", "--cache_dir", "x",
        "--seqlen", "32", "--eval_windows", "2", "--calib", str(calib),
        "--output_results_file", str(results)] + extra)
    runpy.run_path(str(ROOT / "python" / "main.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "sparsity sanity check 0.5000" in out and "ppl on pydoc_data.topics" in out
    assert "wikitext2" not in out and f"result appended to {results}" in out
    assert results.read_text().count("\n") == 1 and (saved / "config.json").exists()


def test_save_is_atomic_and_reloads_identically(tmp_path, monkeypatch):
    import dsnot_kernels as dk
    from dsnot_kernels.models import save_model
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(Path(__file__).parent))
    from pruning_models import calibration, tiny_model

    model = tiny_model("qwen2")
    dk.prune_model(model, calibration(), dk.PruneConfig(progress=False, backend="torch"))
    target = tmp_path / "out"
    save_model(model, None, target)
    x = calibration(nsamples=2)
    reloaded = AutoModelForCausalLM.from_pretrained(target).eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, reloaded(input_ids=x).logits)

    # a save that fails half-way leaves the previous good folder as it was, and no temp folder
    before = sorted(p.name for p in target.iterdir())

    def broken(self, path, **kw):
        (Path(path) / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(type(model), "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, None, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert AutoModelForCausalLM.from_pretrained(target) is not None


@pytest.mark.slow
def test_embedded_model_loads_and_evaluates():
    import dsnot_kernels as dk
    from dsnot_kernels.data import default_texts, tokenize
    from dsnot_kernels.models import load_model

    model, tok, _ = load_model()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert not hasattr(model.config, "quantization_config")
    cal, ev = default_texts()
    ids = tokenize(tok, ev)
    assert ids.numel() > 50_000 and len(cal.split()) > 25_000
    assert 2 < dk.perplexity(model, ids, 256, max_windows=2) < 100


def test_sparse24_is_refused_before_pruning(tiny_dir, capsys):
    from dsnot_kernels.cli import main

    with pytest.raises(SystemExit):
        main(["--model", str(tiny_dir), "--sparse24", "--quiet"])
    assert "needs --pattern 2:4" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["--model", str(tiny_dir), "--pattern", "2:4", "--sparse24", "--quiet"])
        assert re.search("refused: .*CUDA", capsys.readouterr().err)


def test_dtype_bfloat16_loads_prunes_and_saves_in_bfloat16(tiny_dir, tmp_path):
    from safetensors import safe_open

    from dsnot_kernels.cli import main

    saved32, saved16 = tmp_path / "f32", tmp_path / "bf16"
    common = ["--model", str(tiny_dir), "--nsamples", "2", "--seqlen", "32", "--eval-windows", "1", "--no-dense",
              "--no-refine", "--quiet"]
    main(common + ["--save", str(saved32)])
    main(common + ["--save", str(saved16), "--dtype", "bfloat16"])
    with safe_open(str(saved16 / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.bfloat16}
    size16, size32 = (p.joinpath("model.safetensors").stat().st_size for p in (saved16, saved32))
    assert size16 < 0.55 * size32


def test_table_legend_and_also_objective_row(tiny_dir, tmp_path, capsys):
    from dsnot_kernels.cli import main

    out = tmp_path / "r.json"
    main(["--model", str(tiny_dir), "--nsamples", "3", "--seqlen", "32", "--eval-windows", "2", "--no-dense",
          "--paper", "--also-objective", "cov_window", "--window", "4", "--json", str(out), "--quiet"])
    table = capsys.readouterr().out
    assert "lower is better" in table and "swaps:" in table and "prune s:" in table and "masks s:" in table
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["Wanda", "Wanda + DSnoT [skip=mlp]",
                                          "Wanda + DSnoT (cov_window) [skip=none]"]
    assert rows[2]["swaps"] > 0 and rows[2]["sparsity"] == pytest.approx(0.5, abs=0.01)
