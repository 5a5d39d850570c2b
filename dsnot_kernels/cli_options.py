"""Evaluation and per-layer sparsity options of the command lines (dsnot-prune and python/main.py).

- the evaluation text: the default (pydoc_data.topics' second half), a text file, or WikiText-2
  with the published protocol (``dsnot_kernels.wikitext``);
- zero-shot tasks through lm-eval-harness (``dsnot_kernels.lm_eval_adapter``);
- the sparsity profile: ``uniform``, ``owl`` or a JSON file (``dsnot_kernels.pruning.profile``).

Each ``check_*`` runs before the model loads and raises ``ValueError`` with a one-line reason.
"""
from __future__ import annotations

import json
from pathlib import Path

from dsnot_kernels import cli_checks

DATASETS = ("wikitext2",)
REFUSED_DATASETS = ("c4", "ptb")


def add_cli_arguments(p) -> None:
    """dsnot-prune's flags (``--eval`` itself stays in the parser: a file, or ``wikitext2``)."""
    p.add_argument("--eval-file", dest="eval_path", default=None, metavar="PATH",
                   help="evaluation text file; with --eval wikitext2: the local copy of WikiText-2 (wiki.test.raw, "
                        "a .parquet/.arrow file, or a folder with the test split as parquet or datasets' arrow)")
    p.add_argument("--eval-tasks", default=None, metavar="TASK,...",
                   help="lm-eval-harness zero-shot tasks evaluated on the dense and the pruned model in memory "
                        "(e.g. arc_easy,hellaswag; needs lm-eval: pip install 'dsnot_kernels[eval]')")
    p.add_argument("--eval-tasks-include", default=None, metavar="DIR",
                   help="folder of lm-eval task YAML files (local tasks) for --eval-tasks")
    p.add_argument("--eval-tasks-limit", type=int, default=None, metavar="N",
                   help="at most N documents per lm-eval task (None: all)")
    p.add_argument("--sparsity-profile", default="uniform", metavar="uniform|owl|FILE.json",
                   help="each layer's sparsity: uniform, owl (outlier-weighted layer-wise sparsity, "
                        "one dense calibration pass; mean = --sparsity), or a JSON file with a list of one "
                        "sparsity per block or a dict {block or \"block.sublayer\": sparsity}")
    p.add_argument("--owl-m", type=float, default=5.0, help="OWL's M: a score is an outlier above M x its "
                   "block's mean Wanda score")
    p.add_argument("--owl-lambda", type=float, default=0.08,
                   help="OWL's lambda: block sparsities span at most 2 x lambda")


def load_profile(value, flag="--sparsity-profile"):
    """``uniform`` / ``owl`` as is; else a JSON file's list or dict."""
    if value in ("uniform", "owl"):
        return value
    p = Path(value).expanduser()
    if not p.is_file():
        raise ValueError(f"{flag} {value}: not uniform, owl, or an existing JSON file")
    try:
        profile = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{flag} {value}: not valid JSON ({exc})") from None
    if not isinstance(profile, (list, dict)):
        raise ValueError(f"{flag} {value}: the JSON must be a list (one sparsity per block) or a dict")
    return profile


def profile_kwargs(profile, owl_m, owl_lambda) -> dict:
    """``PruneConfig`` keyword arguments of the profile flags (the profile already loaded)."""
    return {"sparsity_profile": profile, "owl_m": owl_m, "owl_lambda": owl_lambda}


def has_module(name) -> bool:
    """Whether ``import name`` would find the module (without importing it; False if blocked in sys.modules)."""
    import importlib.util
    import sys
    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


def check_eval(dataset, path, flag_dataset, flag_path) -> None:
    """``dataset`` (None or "wikitext2") with its local copy ``path``, or ``path`` a text file."""
    if dataset is None:
        cli_checks.check_text_file(flag_path, path)
        return
    if dataset in REFUSED_DATASETS:
        raise ValueError(f"{flag_dataset} {dataset}: only wikitext2 is supported as a dataset name (or give a "
                         f"text file)")
    if path is not None:
        if not Path(path).expanduser().exists():
            raise ValueError(f"{flag_path} {path}: no such file or folder (the local copy of WikiText-2)")
        return
    if not has_module("datasets"):
        raise ValueError(f"{flag_dataset} wikitext2: needs the `datasets` library (pip install datasets) or a local "
                         f"copy ({flag_path} wiki.test.raw, or a folder with the test split as parquet/arrow)")


def check_tasks(spec, include, limit, flag="--eval-tasks"):
    """The lm-eval task list (None when not asked), checked against lm-eval's index."""
    if spec is None:
        if include is not None or limit is not None:
            raise ValueError(f"{flag}-include / {flag}-limit need {flag}")
        return None
    from dsnot_kernels import lm_eval_adapter as lea
    cli_checks.check_positive(f"{flag}-limit", limit)
    if include is not None and not Path(include).expanduser().is_dir():
        raise ValueError(f"{flag}-include {include}: not a folder")
    try:
        tasks = lea.parse_tasks(spec)
        lea.check_tasks(tasks, include)
    except (ValueError, lea.LmEvalUnavailable) as exc:
        raise ValueError(f"{flag} {spec}: {exc}") from None
    return tasks


def evaluation_ids(dataset, path, tokenizer, default_text, seqlen, windows, default_windows=True):
    """``(token ids, description, max_windows)`` of the evaluation text; max_windows None = all.
    windows (the flag): None = the default (all of WikiText-2, as the protocol; 16 of another
    text), 0 = all, N = the first N. The description is None for a text other than WikiText-2."""
    windows = None if windows == 0 else windows
    from dsnot_kernels.data import tokenize
    if dataset == "wikitext2":
        from dsnot_kernels import wikitext
        try:
            rows, source = wikitext.load_test_rows(path)
        except wikitext.WikiTextUnavailable as exc:
            raise ValueError(str(exc)) from None
        ids = tokenize(tokenizer, "\n\n".join(rows))
        return ids, wikitext.describe(source, ids.numel(), seqlen, windows), windows
    windows = 16 if windows is None and default_windows else windows
    ids = tokenize(tokenizer, default_text)
    return ids, None, windows


def zero_shot(tasks, include, limit, model, tokenizer, label) -> dict:
    from dsnot_kernels import lm_eval_adapter as lea
    return {"label": label, "tasks": lea.evaluate_tasks(model, tokenizer, tasks, include_path=include, limit=limit)}
