"""Issue 16: every argument that can be checked without the model is refused before anything loads,
argparse-style (one ``prog: error:`` line, exit status 2), by dsnot-prune and python/main.py; and
``--save`` never destroys what is there."""
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load a model fails the test (the checks must come first)."""
    import dsnot_kernels.models as models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(models, "load_embedded", refuse)


def _files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("notes")
    afile = tmp_path / "afile"
    afile.write_text("precious")
    return empty, victim, afile


CLI_CASES = [
    (["--pattern", "3:2"], "--pattern 3:2"),
    (["--pattern", "2-4"], "--pattern 2-4"),
    (["--sparsity", "1.0"], "--sparsity"),
    (["--sparsity", "nan"], "--sparsity"),
    (["--pattern", "2:4", "--sparsity", "0.7"], "--sparsity 0.7 with --pattern 2:4"),
    (["--nsamples", "0"], "--nsamples must be >= 1"),
    (["--seqlen", "1"], "--seqlen must be >= 2"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--window", "0"], "--window must be >= 1"),
    (["--max-cycle-time", "-1"], "--max-cycle-time"),
    (["--update-threshold", "-1"], "--update-threshold"),
    (["--backend", "nope"], "--backend nope: unknown"),
    (["--backend", "cuda", "--paper"], "--backend cuda cannot serve cpu"),
    (["--backend", "cuda"], "--backend cuda: objective swap runs on the cpu or torch or triton backend only"),
    (["--objective", "cov", "--backend", "cuda"], "objective cov runs on the cpu or torch or triton backend"),
    (["--calib", "/missing/calib.txt"], "--calib /missing/calib.txt: no such file"),
    (["--calib", "{empty}"], "the file is empty"),
    (["--eval", "{tmp}"], "not a file"),
    (["--model", "/does/not/exist"], "--model /does/not/exist: no such file or folder"),
    (["--model", "./nope"], "no such file or folder"),
    (["--model", "{tmp}"], "no config.json"),
    (["--save", "{victim}"], "is not empty"),
    (["--save", "{afile}"], "not a folder"),
    (["--overwrite"], "--overwrite needs --save"),
    (["--json", "/missing/dir/r.json"], "does not exist"),
    (["--eval", "c4"], "only wikitext2"),
    (["--eval", "wikitext2", "--eval-file", "/missing/wt"], "--eval-file /missing/wt: no such file or folder"),
    (["--eval", "{afile}", "--eval-file", "{afile}"], "both name the evaluation text"),
    (["--eval-file", "{tmp}"], "not a file"),
    (["--sparsity-profile", "owl", "--pattern", "2:4"], "unstructured"),
    (["--sparsity-profile", "/missing.json"], "not uniform, owl, or an existing JSON file"),
    (["--sparsity-profile", "{empty}"], "not valid JSON"),
    (["--sparsity-profile", "owl", "--owl-lambda", "-1"], "--owl-lambda -1.0: owl_lambda must be"),
    (["--eval-tasks-limit", "3"], "need --eval-tasks"),
    (["--expert-tokens", "some"], "argument --expert-tokens: invalid choice: 'some'"),
    (["--expert-fallback", "wanda"], "argument --expert-fallback: invalid choice: 'wanda'"),
    (["--expert-min-tokens", "0"], "--expert-min-tokens must be >= 1, got 0"),
    (["--expert-report-tokens", "-1"], "--expert-report-tokens must be >= 0, got -1"),
    (["--expert-group-size", "0"], "--expert-group-size must be >= 1, got 0"),
    (["--expert-group-size", "two"], "argument --expert-group-size: invalid int value"),
]
if not torch.cuda.is_available():
    CLI_CASES.append((["--device", "cuda"], "--device cuda: this torch has no usable CUDA"))


@pytest.mark.parametrize("argv, message", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_cli_refuses_before_loading(argv, message, tmp_path, capsys, no_loading):
    from dsnot_kernels.cli import main

    empty, victim, afile = _files(tmp_path)
    argv = [a.format(empty=empty, victim=victim, afile=afile, tmp=tmp_path) for a in argv]
    message = message.format(tmp=tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv + ["--quiet"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("dsnot-prune: error: ") and message in last, err
    assert (victim / "notes.txt").read_text() == "notes" and afile.read_text() == "precious"


def test_hub_id_refused_offline(monkeypatch, capsys, no_loading):
    from dsnot_kernels.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(SystemExit) as info:
        main(["--model", "someone/not-cached-model", "--quiet"])
    assert info.value.code == 2
    assert "not in the Hugging Face cache while HF_HUB_OFFLINE=1" in capsys.readouterr().err


def test_cli_subprocess_is_quick_and_one_line():
    """The real console entry: exit 2, a one-line error, no traceback."""
    res = subprocess.run([sys.executable, "-m", "dsnot_kernels", "--pattern", "3:2"], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("dsnot-prune: error: --pattern 3:2")


MAIN_CASES = [
    (["--eval_dataset", "c4"], "only wikitext2"),
    (["--eval_dataset", "wikitext2", "--eval_dataset_path", "/missing"], "/missing: no such file or folder"),
    (["--eval_dataset_path", "/missing"], "is the local copy of --eval_dataset wikitext2"),
    (["--eval_tasks", "arc_easy"], "--eval_tasks needs --eval_zero_shot"),
    (["--prune_method", "wanda_owl", "--Lamda", "-1"], "--Lamda must be"),
    (["--sparsity_profile", "owl", "--sparsity_type", "2:4"], "unstructured"),
    (["--sparsity_type", "2:4", "--sparsity_ratio", "0.6"], "needs --sparsity_ratio 0.5"),
    (["--model", "PATH"], "--model PATH: no such file or folder"),
    (["--model", "/does/not/exist"], "no such file or folder"),
    (["--sparsity_ratio", "1.0"], "--sparsity_ratio must be in [0, 1)"),
    (["--nsamples", "0"], "--nsamples must be >= 1"),
    (["--backend", "nope"], "--backend nope: unknown"),
    (["--calib", "/missing"], "--calib /missing: no such file"),
    (["--save_model", "{victim}"], "is not empty"),
    (["--expert_tokens", "some"], "argument --expert_tokens: invalid choice: 'some'"),
    (["--expert_min_tokens", "0"], "--expert_min_tokens must be >= 1, got 0"),
    (["--expert_group_size", "0"], "--expert_group_size must be >= 1, got 0"),
]


@pytest.mark.parametrize("argv, message", MAIN_CASES, ids=[" ".join(a) for a, _ in MAIN_CASES])
def test_main_py_refuses_before_loading(argv, message, tmp_path, monkeypatch, capsys, no_loading):
    _, victim, _ = _files(tmp_path)
    argv = [a.format(victim=victim) for a in argv]
    monkeypatch.setattr(sys, "argv", ["main.py", "--sparsity_ratio", "0.5"] + argv)
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(ROOT / "python" / "main.py"), run_name="__main__")
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("main.py: error: ") and message in last, last


def test_main_py_eval_dataset_file_is_used(tmp_path):
    """--eval_dataset FILE is the evaluation text, and the result line names it."""
    sys.path.insert(0, str(ROOT / "python"))
    try:
        import main as authors_main
    finally:
        sys.path.pop(0)
    text = tmp_path / "eval.txt"
    text.write_text("some evaluation text\n")
    args = authors_main.parse(["--eval_dataset", str(text), "--sparsity_ratio", "0.5"])
    authors_main.check(args)
    assert args.eval_file == str(text)


@pytest.mark.parametrize("method, initial, expected", [("sparsegpt", "wanda", "sparsegpt"), ("wanda", "wanda", "wanda"),
                                                       ("DSnoT", "sparsegpt", "sparsegpt"), ("dense", "wanda", "-")])
def test_main_py_results_line_names_the_model_and_the_initial_method(method, initial, expected):
    """results.txt: the loaded model's name (not None when --model is omitted) and the initial
    method the run really used (--prune_method sparsegpt: sparsegpt, not --initial_method's wanda)."""
    sys.path.insert(0, str(ROOT / "python"))
    try:
        import main as authors_main
    finally:
        sys.path.pop(0)
    args = authors_main.parse(["--prune_method", method, "--initial_method", initial, "--sparsity_ratio", "0.5"])
    fields = authors_main.results_line("SmolLM2-135M", args, 0.5, 12.3, 1.0).rstrip("\n").split("\t")
    assert fields[0] == "SmolLM2-135M" and fields[1] == method and fields[2] == expected
@pytest.mark.parametrize("argv, module, message", [
    (["--eval", "wikitext2"], "datasets", "--eval wikitext2: needs the `datasets` library"),
    (["--eval-tasks", "arc_easy"], "lm_eval", "--eval-tasks arc_easy: zero-shot tasks need lm-eval-harness"),
])
def test_missing_optional_libraries_are_one_line_errors(argv, module, message, monkeypatch, capsys, no_loading):
    from dsnot_kernels.cli import main

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(SystemExit) as info:
        main(argv + ["--quiet"])
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("dsnot-prune: error: ") and message in last, last
