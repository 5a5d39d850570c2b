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


def test_unknown_task_is_named(tmp_path):
    folder, _ = write_mc_task(tmp_path / "tasks", n=2)
    with pytest.raises(lea.LmEvalUnavailable, match="no task no_such_task_xyz"):
        lea.check_tasks(["dsnot_local_mc", "no_such_task_xyz"], folder)


def test_parse_tasks():
    assert lea.parse_tasks(" arc_easy,hellaswag ,") == ["arc_easy", "hellaswag"]
    with pytest.raises(ValueError, match="no task"):
        lea.parse_tasks(" , ")
