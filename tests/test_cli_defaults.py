"""dsnot-prune's defaults, presets, baseline, torchrun batch split and the small things a user sees
(help defaults, Ctrl-C, --quiet, offline hub, flag-speaking errors): argument paths, no model load."""
import inspect
import socket
import time
from pathlib import Path

import pytest

import dsnot_kernels as dk
from dsnot_kernels import cli, cli_checks
from dsnot_kernels.pruning.config import SWAP_MAX_COLS


def _configs(*argv):
    return cli.check_args(cli.build_parser().parse_args(list(argv)))


def _what(configs):
    return [(c.refine, c.objective, c.skip, c.reconstruct) for c in configs]


def test_default_is_the_best_measured_and_paper_is_one_flag_away():
    assert _what(_configs()) == [(False, "swap", "none", False), (True, "swap", "none", False)]
    assert _what(_configs("--paper")) == [(False, "dsnot", "mlp", False), (True, "dsnot", "mlp", False)]
    assert _what(_configs("--objective", "swap"))[1] == (True, "swap", "none", False)
    assert _what(_configs("--objective", "dsnot"))[1] == (True, "dsnot", "mlp", False)
    assert _what(_configs("--objective", "cov", "--skip", "mlp"))[1] == (True, "cov", "mlp", False)
    args = cli.build_parser().parse_args([])
    assert cli.resolve_objective(args, SWAP_MAX_COLS) == ("swap", "none")
    assert cli.resolve_objective(args, SWAP_MAX_COLS + 1) == ("cov_window", "none")
    with pytest.raises(ValueError, match="--paper"):
        _configs("--paper", "--objective", "swap")


def test_prune_config_presets_and_unchanged_defaults():
    base = dk.PruneConfig()
    assert (base.objective, base.skip) == ("dsnot", "mlp")          # the contract: the authors' defaults
    best = dk.PruneConfig.preset("best", sparsity=0.6)
    assert (best.objective, best.skip, best.sparsity) == ("swap", "none", 0.6)
    assert dk.PruneConfig.preset("best", widest_cols=SWAP_MAX_COLS + 1).objective == "cov_window"
    assert dk.PruneConfig.preset("paper") == base
    with pytest.raises(ValueError, match="preset must be"):
        dk.PruneConfig.preset("fast")


def test_no_baseline_and_the_baseline_is_not_reconstructed():
    assert _what(_configs("--no-baseline")) == [(True, "swap", "none", False)]
    assert _what(_configs("--reconstruct")) == [(False, "swap", "none", False), (True, "swap", "none", True)]
    assert _what(_configs("--reconstruct", "--no-refine"))[0][3] is True
    with pytest.raises(ValueError, match="nothing to run"):
        _configs("--no-baseline", "--no-refine")
    assert "baseline: the run of the initial method alone" in " ".join(cli.build_parser().format_help().split())


def test_torchrun_batch_split(monkeypatch):
    assert cli_checks.batch_size_for_ranks(4, 8, 2) == 2
    assert cli_checks.batch_size_for_ranks(5, 8, 4) == 1
    assert cli_checks.batch_size_for_ranks(32, 8, 2) == 8
    assert cli_checks.batch_size_for_ranks(3, 8, 1) == 8
    for n, w in ((4, 2), (5, 4), (9, 3), (16, 2)):
        b = cli_checks.batch_size_for_ranks(n, 8, w)
        assert -(-n // b) >= w and b <= -(-n // w)      # every rank gets a batch
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert [c.batch_size for c in _configs("--nsamples", "4")] == [2, 2]
    with pytest.raises(ValueError, match="--nsamples 1: under torchrun with 2 ranks"):
        _configs("--nsamples", "1")


def test_help_shows_every_default():
    text = " ".join(cli.build_parser().format_help().split()).split("options:", 1)[1]
    for flag, default in (("--nsamples NSAMPLES", "default: 32"), ("--seqlen SEQLEN", "default: 512"),
                          ("--eval-windows EVAL_WINDOWS", "None: 16"), ("--batch-size BATCH_SIZE", "default: 8"),
                          ("--owl-lambda OWL_LAMBDA", "default: 0.08")):
        assert f"{flag} " in text and default in text.split(flag, 1)[1].split("--", 1)[0], flag
    assert "(default" not in text.replace("(default: ", ""), "a default said twice or by hand"


def test_sparse24_min_size_is_one_constant():
    default = inspect.signature(dk.to_sparse_24).parameters["min_size"].default
    assert cli.build_parser().parse_args([]).sparse24_min_size == default


def test_save_error_speaks_flags(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError) as exc:
        _configs("--save", str(tmp_path))
    assert "--overwrite" in str(exc.value) and "overwrite=True" not in str(exc.value)


def test_unknown_model_fails_fast_without_network(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def no_network(*a, **k):
        raise OSError("unreachable")
    monkeypatch.setattr(socket, "create_connection", no_network)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="cannot be reached"):
        cli_checks.check_model("someone/no-such-model")
    assert time.perf_counter() - t0 < 5


def test_ctrl_c_is_one_line_and_exit_130_and_quiet_silences_libraries(monkeypatch, capsys):
    import dsnot_kernels.models as models
    from transformers.utils import logging as hf_logging

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(models, "load_model", interrupted)
    hf_logging.enable_progress_bar()
    try:
        assert cli.main(["--quiet"]) == 130
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity_warning()
    err = capsys.readouterr().err
    assert err.strip() == "dsnot-prune: interrupted"


def test_pruned_count_is_rounded_down_per_row_as_documented():
    """docs/ALGORITHM.md §2: int(cols * s) per row; 0.6 of 576 columns prunes 345 (0.5990)."""
    import torch
    g = torch.Generator().manual_seed(0)
    W = torch.randn(4, 576, generator=g)
    st = dk.CalibrationStats(576)
    st.add_batch(torch.randn(2, 16, 576, generator=g))
    mask = dk.refine_mask(W, st.sum_metric_row, st.var, st.scaler_row, sparsity=0.6, max_cycle_time=0)
    assert mask.sum(1).tolist() == [345] * 4 and int(576 * 0.6) == 345
    assert "0.6 of 576 columns prunes 345 per row (0.5990)" in " ".join(
        (Path(__file__).resolve().parents[1] / "docs/ALGORITHM.md").read_text().split())
