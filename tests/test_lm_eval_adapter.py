"""Zero-shot accuracy through lm-eval-harness on a local YAML task (jsonl data), in memory, after
pruning: lm-eval's accuracy equals an independent log-likelihood argmax over the choices."""
import pytest
import torch
import torch.nn.functional as F

import dsnot_kernels as dk
from dsnot_kernels import lm_eval_adapter as lea

from eval_fixtures import tiny_lm, write_mc_task

pytest.importorskip("lm_eval", reason="lm-eval-harness is not installed (pip install lm-eval==0.4.13)")


def transcribed_accuracy(model, tok, docs):
    """lm-eval's multiple-choice rule written out: continuation ' ' + choice after the question,
    tokenized as whole - context (no special tokens), summed log-probabilities, argmax == label."""
    hits = 0
    for d in docs:
        ctx = tok(d["question"], add_special_tokens=False)["input_ids"]
        scores = []
        for choice in d["choices"]:
            whole = tok(d["question"] + " " + choice, add_special_tokens=False)["input_ids"]
            cont = whole[len(ctx):]
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = F.log_softmax(model(input_ids=ids[:, :-1]).logits.double(), -1)[0]
            scores.append(sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont)))
        hits += int(max(range(len(scores)), key=scores.__getitem__) == d["label"])
    return hits / len(docs)


def test_local_task_accuracy_on_the_pruned_model_in_memory(tmp_path):
    folder, docs = write_mc_task(tmp_path / "tasks", n=12)
    model, tok = tiny_lm()
    dk.prune_model(model, torch.randint(0, len(tok), (4, 32), generator=torch.Generator().manual_seed(0)),
                   dk.PruneConfig(sparsity=0.6, progress=False))
    pruned = {k: v.clone() for k, v in model.state_dict().items()}
    rows = lea.evaluate_tasks(model, tok, ["dsnot_local_mc"], include_path=folder)
    assert rows["dsnot_local_mc"]["samples"] == len(docs)
    assert rows["dsnot_local_mc"]["acc"] == pytest.approx(transcribed_accuracy(model, tok, docs), abs=1e-12)
    assert all(torch.equal(pruned[k], v) for k, v in model.state_dict().items())  # evaluated as it is
    table = lea.format_table(rows, "Wanda 60 %")
    assert "dsnot_local_mc" in table and f"{rows['dsnot_local_mc']['acc']:.4f}" in table


@pytest.mark.slow  # builds lm-eval's index of its built-in tasks (~30 s)
def test_unknown_task_is_named(tmp_path):
    folder, _ = write_mc_task(tmp_path / "tasks", n=2)
    with pytest.raises(lea.LmEvalUnavailable, match="no task no_such_task_xyz"):
        lea.check_tasks(["dsnot_local_mc", "no_such_task_xyz"], folder)


def test_parse_tasks():
    assert lea.parse_tasks(" arc_easy,hellaswag ,") == ["arc_easy", "hellaswag"]
    with pytest.raises(ValueError, match="no task"):
        lea.parse_tasks(" , ")


@pytest.fixture
def model_dir(tmp_path):
    model, tok = tiny_lm()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_cli_eval_tasks_and_owl_print_tables(tmp_path, model_dir, capsys):
    """dsnot-prune --eval-tasks: a zero-shot table for the dense and the pruned model next to the
    perplexity table; --sparsity-profile owl: each block's sparsity and the total."""
    import json

    from dsnot_kernels.cli import main

    folder, docs = write_mc_task(tmp_path / "tasks", n=6)
    report = tmp_path / "r.json"
    main(["--model", str(model_dir), "--nsamples", "2", "--seqlen", "32", "--eval-windows", "1", "--no-refine",
          "--sparsity", "0.6", "--sparsity-profile", "owl", "--owl-m", "2", "--eval-tasks", "dsnot_local_mc",
          "--eval-tasks-include", str(folder), "--quiet", "--json", str(report)])
    out = capsys.readouterr().out
    result = json.loads(report.read_text())
    labels = [z["label"] for z in result["zero_shot"]]
    assert labels == ["dense", "Wanda + OWL"]
    assert all(z["tasks"]["dsnot_local_mc"]["samples"] == len(docs) for z in result["zero_shot"])
    assert "zero-shot (lm-eval): dense" in out and "zero-shot (lm-eval): Wanda + OWL" in out
    blocks = result["reports"][-1]["block_sparsity"]
    assert "sparsity profile: owl (M 2.0, lambda 0.08)" in out and "block   1: sparsity" in out
    assert len(blocks) == 2 and f"total: sparsity {result['reports'][-1]['sparsity']:.4f}" in out


@pytest.mark.slow  # a whole main.py run with lm-eval (~40 s on the loaded 2-core machine)
def test_main_py_zero_shot_wikitext2_and_wanda_owl(tmp_path, model_dir, capsys, monkeypatch):
    import runpy
    import sys
    from pathlib import Path

    from eval_fixtures import wikitext_rows, write_raw

    folder, _ = write_mc_task(tmp_path / "tasks", n=4)
    raw = write_raw(tmp_path / "wiki.test.raw", wikitext_rows(n_articles=3))
    main_py = Path(__file__).resolve().parents[1] / "python" / "main.py"
    monkeypatch.setattr(sys, "argv", [
        "main.py", "--model", str(model_dir), "--prune_method", "wanda_owl", "--sparsity_ratio", "0.6",
        "--Hyper_m", "2", "--Lamda", "0.05", "--nsamples", "2", "--seqlen", "32", "--eval_dataset", "wikitext2",
        "--eval_dataset_path", str(raw), "--eval_zero_shot", "--eval_tasks", "dsnot_local_mc",
        "--eval_tasks_include", str(folder), "--output_results_file", str(tmp_path / "results.txt")])
    runpy.run_path(str(main_py), run_name="__main__")
    out = capsys.readouterr().out
    assert "sparsity profile: owl (M 2.0, lambda 0.05)" in out
    assert "ppl on WikiText-2 raw test split from" in out and "len // seqlen" in out
    assert "zero-shot (lm-eval): wanda_owl" in out and "dsnot_local_mc" in out
