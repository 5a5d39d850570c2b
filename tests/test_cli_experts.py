"""The mixture-of-experts options of dsnot-prune (--expert-tokens, ...) and python/main.py
(--expert_tokens, ...): each reaches every PruneConfig of the run and the report (a tiny random
Mixtral saved to a folder, through the CLIs' own code path); main.py's sparsity check counts the
experts."""
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

import dsnot_kernels as dk
from moe_models import tiny_moe
from pruning_models import word_text, word_tokenizer

ROOT = Path(__file__).resolve().parents[1]
NSAMPLES, SEQLEN = 4, 16
ASKED = dict(expert_tokens="all", expert_min_tokens=3, expert_fallback="error", expert_report_tokens=5,
             expert_group_size=2)


def _authors_main():
    sys.path.insert(0, str(ROOT / "python"))
    try:
        import main as authors_main
    finally:
        sys.path.pop(0)
    return authors_main


def _argv(sep):
    return [a for k, v in ASKED.items() for a in ("--" + k.replace("_", sep), str(v))]


def test_dsnot_prune_flags_reach_every_config():
    from dsnot_kernels import cli
    defaults = dk.PruneConfig()
    for c in cli.check_args(cli.build_parser().parse_args(["--quiet", "--also-objective", "mse"])):
        assert all(getattr(c, k) == getattr(defaults, k) for k in ASKED)
    configs = cli.check_args(cli.build_parser().parse_args(["--quiet", "--also-objective", "mse"] + _argv("-")))
    assert len(configs) == 3 and all(getattr(c, k) == v for c in configs for k, v in ASKED.items())


def test_main_py_flags_reach_the_config():
    authors_main = _authors_main()
    config = authors_main.check(authors_main.parse(["--sparsity_ratio", "0.5"] + _argv("_")))
    assert all(getattr(config, k) == v for k, v in ASKED.items())
    config = authors_main.check(authors_main.parse(["--sparsity_ratio", "0.5"]))
    assert all(getattr(config, k) == getattr(dk.PruneConfig(), k) for k in ASKED)


@pytest.fixture
def mixtral_folder(tmp_path):
    from dsnot_kernels.models import save_model
    folder = tmp_path / "tiny-mixtral"
    save_model(tiny_moe("mixtral"), word_tokenizer(adds_bos=False), folder)
    (tmp_path / "calib.txt").write_text(word_text(400, seed=1))
    (tmp_path / "eval.txt").write_text(word_text(80, seed=2))
    return folder


def _cli(folder, *extra):
    from dsnot_kernels import cli
    out = folder.parent / "r.json"
    assert cli.main(["--model", str(folder), "--calib", str(folder.parent / "calib.txt"),
                     "--eval", str(folder.parent / "eval.txt"), "--nsamples", str(NSAMPLES), "--seqlen", str(SEQLEN),
                     "--eval-windows", "1", "--no-dense", "--no-baseline", "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())["reports"][0]


def _experts(report):
    return [e for e in report["sublayers"] if "expert" in e]


def test_dsnot_prune_expert_flags_reach_the_report(mixtral_folder, capsys):
    report = _cli(mixtral_folder, "--sparsity", "0.6", "--expert-min-tokens", "1000000",
                  "--expert-report-tokens", "1000000")
    assert report["config"]["expert_min_tokens"] == 10 ** 6 and report["config"]["expert_tokens"] == "routed"
    for block in report["blocks"]:
        summary = block["experts"][0]
        assert summary["fallback"] == [0, 1, 2, 3] and summary["few_tokens"] == 4
        assert sum(summary["tokens"]) == 2 * NSAMPLES * SEQLEN            # top-2 of every token
    assert len(_experts(report)) == 2 * 4 * 2 and all(e["fallback"] == "magnitude" for e in _experts(report))
    assert all(e["sparsity"] == pytest.approx(0.6, abs=1 / 64) for e in _experts(report))
    assert "4 of 4 experts had fewer than 1000000 routed tokens" in capsys.readouterr().err
    report = _cli(mixtral_folder, "--quiet", "--expert-tokens", "all", "--expert-group-size", "2")
    assert report["config"]["expert_group_size"] == 2
    for block in report["blocks"]:
        summary = block["experts"][0]
        assert summary["tokens"] == [NSAMPLES * SEQLEN] * 4 and summary["fallback"] == []
        assert summary["passes"] == 2                                     # swap needs M: 4 experts in groups of 2
    assert all(e["fallback"] is None and e["refined"] for e in _experts(report))


def test_dsnot_prune_expert_fallback_error_stops(mixtral_folder):
    from dsnot_kernels.pruning.driver import PruningError
    with pytest.raises(PruningError, match="expert_fallback='error'"):
        _cli(mixtral_folder, "--quiet", "--expert-min-tokens", "1000000", "--expert-fallback", "error")


def test_main_py_prunes_and_counts_every_expert(mixtral_folder, monkeypatch, capsys):
    """main.py --expert_report_tokens reaches the printed summary; its sparsity check counts the experts."""
    results = mixtral_folder.parent / "r.txt"
    monkeypatch.setattr(sys, "argv", [
        "main.py", "--model", str(mixtral_folder), "--prune_method", "wanda", "--sparsity_ratio", "0.5",
        "--nsamples", str(NSAMPLES), "--seqlen", str(SEQLEN), "--calib", str(mixtral_folder.parent / "calib.txt"),
        "--eval", str(mixtral_folder.parent / "eval.txt"), "--eval_windows", "1", "--expert_report_tokens", "1000000",
        "--output_results_file", str(results)])
    runpy.run_path(str(ROOT / "python" / "main.py"), run_name="__main__")
    assert "4 of 4 experts had fewer than 1000000 routed tokens" in capsys.readouterr().out
    assert float(results.read_text().split("\t")[5]) == pytest.approx(0.5)
    model = tiny_moe("mixtral")                                 # experts all zero, attention dense
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.experts.gate_up_proj.zero_()
            layer.mlp.experts.down_proj.zero_()
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    attention = sum(p.numel() for n, p in model.named_parameters() if "self_attn" in n and p.dim() == 2)
    assert _authors_main()._check_sparsity(model) == pytest.approx(experts / (experts + attention))


def test_dsnot_prune_expert_tokens_all_on_module_list_experts_is_an_argument_error(monkeypatch, capsys, tmp_path):
    """Known only once the model is loaded: one argparse-style line (exit 2), before any weight changes."""
    import dsnot_kernels.models as models
    from dsnot_kernels import cli
    model = tiny_moe("linear_experts")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(models, "load_model", lambda *a, **k: (model, word_tokenizer(adds_bos=False), "tiny"))
    (tmp_path / "calib.txt").write_text(word_text(400, seed=1))
    with pytest.raises(SystemExit) as info:
        cli.main(["--calib", str(tmp_path / "calib.txt"), "--eval", str(tmp_path / "calib.txt"), "--nsamples", "2",
                  "--seqlen", str(SEQLEN), "--no-dense", "--no-baseline", "--quiet", "--expert-tokens", "all"])
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("dsnot-prune: error: --expert-tokens all needs fused experts; mlp.experts"), last
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
