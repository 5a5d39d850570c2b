"""Zero-shot accuracy through lm-eval-harness (``pip install dsnot_kernels[eval]``: ``lm_eval``).

The model is evaluated in memory, as it is after pruning: lm-eval's ``HFLM`` wraps the model object
and its tokenizer (no save, no reload). Tasks are lm-eval's own names (``arc_easy``, ``hellaswag``,
``piqa``, ...: their data come through ``datasets``, from its cache or the hub) or tasks of YAML
files in ``include_path`` (e.g. a local jsonl file as ``dataset_path: json`` with
``dataset_kwargs: {data_files: ...}``).
"""
from __future__ import annotations

import math

INSTALL_HINT = "pip install 'lm-eval==0.4.13' (or dsnot_kernels[eval])"


class LmEvalUnavailable(RuntimeError):
    """lm-eval is not installed, or a task cannot be found or loaded (one-line message)."""


def parse_tasks(spec) -> list:
    """``"arc_easy, hellaswag"`` -> ``["arc_easy", "hellaswag"]``; refuses an empty list."""
    tasks = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else list(spec)) if t.strip()]
    if not tasks:
        raise ValueError("no task given (e.g. --eval-tasks arc_easy,hellaswag)")
    return tasks


def check_available() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise LmEvalUnavailable(f"zero-shot tasks need lm-eval-harness: {INSTALL_HINT}") from None


_MANAGERS: dict = {}


def task_manager(tasks, include_path=None):
    """An lm-eval ``TaskManager`` that knows ``tasks``: only the YAML files of ``include_path`` when
    they hold every task (indexing lm-eval's built-in tasks takes ~30 s), else those and the
    built-in ones. Cached per include path. Raises ``LmEvalUnavailable`` naming unknown tasks."""
    check_available()
    from lm_eval.tasks import TaskManager
    paths = None
    if include_path:
        paths = [str(p) for p in include_path] if isinstance(include_path, (list, tuple)) else [str(include_path)]
    for defaults in ((False, True) if paths else (True,)):
        key = (tuple(paths or ()), defaults)
        if key not in _MANAGERS:
            _MANAGERS[key] = TaskManager(include_path=paths, include_defaults=defaults)
        tm = _MANAGERS[key]
        unknown = [t for t in tasks if t not in tm.all_tasks]
        if not unknown:
            return tm
    where = f" nor in --eval-tasks-include {', '.join(paths)}" if paths else ""
    raise LmEvalUnavailable(f"lm-eval has no task {', '.join(unknown)}{where}")


def check_tasks(tasks, include_path=None) -> None:
    """Raise ``LmEvalUnavailable`` naming the tasks lm-eval does not know (before any pruning)."""
    task_manager(tasks, include_path)


def evaluate_tasks(model, tokenizer, tasks, *, include_path=None, limit=None, batch_size=1, num_fewshot=None,
                   seed=1234) -> dict:
    """Evaluate ``model`` (a Hugging Face causal LM object, as it is in memory) on lm-eval ``tasks``.

    Returns ``{task: {"acc": x, "acc_stderr": s, "acc_norm": ..., "samples": n}}`` with the metrics
    lm-eval reports (``,none`` filter suffixes dropped; NaN stderr as None). limit: at most this
    many documents per task (None: all). num_fewshot: None = each task's default (0 for the usual
    zero-shot tasks).
    """
    check_available()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = simple_evaluate(model=lm, tasks=list(tasks), task_manager=task_manager(tasks, include_path), limit=limit,
                              num_fewshot=num_fewshot, log_samples=False, random_seed=seed, numpy_random_seed=seed,
                              torch_random_seed=seed, fewshot_random_seed=seed, bootstrap_iters=1000)
    finally:
        model.train(was_training)
    results = {}
    for task, metrics in out["results"].items():
        row = {}
        for key, value in metrics.items():
            if key == "alias" or key.startswith("sample_len") or not isinstance(value, (int, float)):
                continue
            name = key.split(",")[0]
            row[name] = None if isinstance(value, float) and math.isnan(value) else float(value)
        n = out.get("n-samples", {}).get(task, {})
        row["samples"] = n.get("effective", n.get("original"))
        results[task] = row
    return results


def format_table(rows: dict, label: str = "") -> str:
    """Markdown table of ``{task: metrics}`` (acc and acc_norm with stderr) under ``label``."""
    lines = [f"zero-shot (lm-eval){': ' + label if label else ''}",
             f"| {'task':<24} | {'acc':>8} | {'± stderr':>8} | {'acc_norm':>8} | {'samples':>7} |",
             f"|{'-' * 26}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 9}|"]
    fmt = lambda v: f"{v:>8.4f}" if isinstance(v, float) else f"{'–':>8}"  # noqa: E731
    accs = []
    for task, m in rows.items():
        if isinstance(m.get("acc"), float):
            accs.append(m["acc"])
        lines.append(f"| {task:<24} | {fmt(m.get('acc'))} | {fmt(m.get('acc_stderr'))} | {fmt(m.get('acc_norm'))} | "
                     f"{m.get('samples') if m.get('samples') is not None else '–':>7} |")
    if len(accs) > 1:
        lines.append(f"| {'mean acc':<24} | {sum(accs) / len(accs):>8.4f} | {'':>8} | {'':>8} | {'':>7} |")
    return "\n".join(lines)
