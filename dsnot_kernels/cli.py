"""``dsnot-prune``: prune a causal LM layer by layer and compare perplexities (docs/API.md).

With no ``--model`` it runs offline on the embedded SmolLM2-135M-Instruct and the standard
library's pydoc_data.topics text (first half calibrates, second half evaluates). It prints a table
(dense, initial-only and refined perplexity, times) and, with ``--json``, writes the same as JSON.
Every argument that can be checked without the model is checked before it loads (exit status 2).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from dsnot_kernels import cli_checks, cli_options, cli_run
from dsnot_kernels.cli_checks import ArgumentError
from dsnot_kernels.cli_experts import add_expert_flags, expert_options
from dsnot_kernels.bos import BOS_CHOICES
from dsnot_kernels.ops import DEFAULT_WINDOW, OBJECTIVES
from dsnot_kernels.pruning.config import SWAP_MAX_COLS, preset_settings
from dsnot_kernels.sparse24 import DEFAULT_MIN_SIZE as SPARSE24_MIN_SIZE

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dsnot-prune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None, help="Hugging Face folder or name, or a .gguf file "
                   "(None: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--sparsity", type=float, default=0.5, help="unstructured sparsity ratio")
    p.add_argument("--pattern", default="unstructured", help="unstructured, 2:4, 4:8, ...")
    p.add_argument("--initial", default="wanda", choices=["wanda", "magnitude", "sparsegpt", "sparsegpt_metric"],
                   help="sparsegpt: SparseGPT as published (mask and weight updates); sparsegpt_metric: its "
                        "saliency for the mask only (the authors' DSnoT flag)")
    p.add_argument("--reconstruct", action="store_true",
                   help="after each sub-layer's final mask, re-solve the kept weights for the calibration outputs "
                        "(refined runs only; the baseline too with --no-refine)")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the baseline: the run of the initial method alone (e.g. Wanda without DSnoT), "
                        "pruned first for comparison; halves the time")
    p.add_argument("--paper", action="store_true",
                   help="the authors' settings: --objective dsnot --skip mlp (default: the best measured "
                        f"choice: --objective swap --skip none; cov_window for sub-layers wider than "
                        f"{SWAP_MAX_COLS} columns)")
    p.add_argument("--no-refine", action="store_true", help="the initial method alone (no DSnoT)")
    p.add_argument("--skip", default=None, choices=["mlp", "none", "self_attn"],
                   help="sub-layers that get the initial mask only (None: mlp for --objective dsnot, as the "
                        "authors, else none)")
    p.add_argument("--objective", default=None, choices=list(OBJECTIVES),
                   help="dsnot: the authors' rule; mse: swap only if mean² + variance output error drops; "
                        "cov: only if the full output error drops (second moment per sub-layer; cpu or torch backend); "
                        "cov_window: the best such swap among the next --window candidates of each cursor; "
                        "swap: the best swap among all pairs of the row, until none lowers the error "
                        "(None: swap, or cov_window beyond %d columns; --paper: dsnot)" % SWAP_MAX_COLS)
    p.add_argument("--also-objective", action="append", default=[], choices=list(OBJECTIVES), metavar="OBJECTIVE",
                   help="one more refined run (and table row) with this objective, on the sub-layers of "
                        "--also-skip; repeatable (the demo adds its best objective this way)")
    p.add_argument("--also-skip", default="none", choices=["mlp", "none", "self_attn"],
                   help="--skip of the --also-objective runs (none: every sub-layer)")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="candidates per list for --objective cov_window")
    p.add_argument("--max-cycle-time", type=int, default=None,
                   help="swaps per row at most (0 = the initial mask only; None: the objective's, "
                        "50; swap: max(64, cols // 4))")
    p.add_argument("--update-threshold", type=float, default=0.1,
                   help="a row stops swapping once |its output error| <= this (not used by swap)")
    p.add_argument("--pow-of-var-regrowing", type=float, default=1.0,
                   help="p in the regrowth key mean-shift / var**p (0 = no division by the variance)")
    p.add_argument("--nsamples", type=int, default=32, help="calibration samples")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per calibration sample and eval window")
    p.add_argument("--eval-windows", type=int, default=None,
                   help="evaluate on the first N windows of the evaluation text (0 = all; None: 16, and every "
                        "window of WikiText-2, as its protocol)")
    p.add_argument("--calib", default=None, help="calibration text file (default: pydoc_data.topics, first half)")
    p.add_argument("--eval", dest="eval_file", default=None,
                   help="evaluation text file, or wikitext2: the WikiText-2 test split with the published "
                        "protocol (datasets, or a local copy: --eval-file) (default: pydoc_data.topics, second half)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows")
    p.add_argument("--bos", default="auto", choices=list(BOS_CHOICES),
                   help="calibration and evaluation windows start with BOS: auto (where the tokenizer adds one; "
                        "default), always, never (plain slices of the token stream); docs/MODELS.md")
    p.add_argument("--batch-size", type=int, default=8, help="calibration samples per forward pass (under "
                   "torchrun: made smaller when there are fewer batches than ranks)")
    p.add_argument("--authors-sqrt", action="store_true",
                   help="take the wanda metric's square root with torch.sqrt, as the authors' code (on CPU "
                        "ATen's float32 sqrt is not correctly rounded; masks then match theirs bit for bit)")
    p.add_argument("--authors-sum", action="store_true",
                   help="sum each row's reconstruction error with torch.sum, as the authors' code (the torch "
                        "backend only; with --authors-sqrt the masks are theirs bit for bit)")
    p.add_argument("--device", default=None, help="where blocks are computed (None: where the model is)")
    p.add_argument("--backend", default=None, help="refine_mask backend (None: best available)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense evaluation")
    p.add_argument("--record-error", action="store_true",
                   help="record each sub-layer's output error before/after refinement")
    p.add_argument("--plot", default=None, metavar="FILE", help="PNG of the per-layer output error "
                   "(implies --record-error)")
    p.add_argument("--sparse24", action="store_true",
                   help="after 2:4 pruning, convert the linear layers to PyTorch semi-structured sparse weights "
                        "(CUDA sm80+, fp16) and evaluate again with the sparse kernels; refused with the reason "
                        "where it cannot run")
    p.add_argument("--sparse24-min-size", type=int, default=SPARSE24_MIN_SIZE,
                   help="layers with fewer rows or columns stay dense")
    p.add_argument("--save", default=None, metavar="DIR",
                   help="write the pruned model (safetensors) to DIR, which must not exist or be empty; atomic")
    p.add_argument("--overwrite", action="store_true",
                   help="with --save: replace the model files in a non-empty DIR (other files are kept)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES),
                   help="dtype the model is loaded, pruned, evaluated and saved in (bfloat16 "
                        "halves the saved file, and evaluates slower and less precisely on CPU)")
    p.add_argument("--json", default=None, metavar="REPORT.json", help="write the table and reports as JSON")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no messages (the table only)")
    cli_options.add_cli_arguments(p)
    add_expert_flags(p)  # --expert-tokens, --expert-min-tokens, ... (cli_experts.py)
    return p


def resolve_objective(args, widest_cols=None):
    """(objective, skip) of the refined runs. ``--paper``: the authors' (dsnot, mlp). Else
    ``--objective``, None = the "best" preset (``PruneConfig.preset``: swap, or cov_window when the
    widest sub-layer has more than ``SWAP_MAX_COLS`` input columns); ``--skip`` None follows the
    objective: mlp for dsnot (the authors' default), none for the others (as measured)."""
    if args.paper:
        if args.objective not in (None, "dsnot") or args.skip not in (None, "mlp"):
            raise ValueError("--paper means --objective dsnot --skip mlp; give either --paper or those flags")
        return "dsnot", "mlp"
    objective = args.objective or preset_settings("best", widest_cols)["objective"]
    return objective, args.skip or ("mlp" if objective == "dsnot" else "none")


def widest_sublayer(model) -> int:
    """The largest input width (columns) of the linear sub-layers of ``model``'s blocks."""
    from dsnot_kernels.pruning import find_blocks, find_sublayers, weight_view
    return max((weight_view(m).shape[1] for b in find_blocks(model)[1] for m in find_sublayers(b).values()),
               default=0)


def quiet_libraries() -> None:
    """No progress bars or info logs from transformers / huggingface_hub (GGUF conversion,
    weight loading): what ``--quiet`` promises."""
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()
    except ImportError:
        pass


def check_args(args) -> list:
    """Check every argument that needs no model; return the ``PruneConfig`` of each run (initial
    mask only, then refined unless ``--no-refine``). Raises ``ValueError`` with a one-line reason."""
    import dsnot_kernels as dk
    from dsnot_kernels.models import check_save_target

    cli_checks.check_positive("--nsamples", args.nsamples)
    cli_checks.check_positive("--seqlen", args.seqlen, 2)
    cli_checks.check_positive("--eval-windows", args.eval_windows, 0)
    cli_checks.check_positive("--batch-size", args.batch_size)
    cli_checks.check_positive("--window", args.window)
    cli_checks.check_positive("--max-cycle-time", args.max_cycle_time, 0)
    cli_checks.check_positive("--threads", args.threads)
    cli_checks.check_positive("--sparse24-min-size", args.sparse24_min_size, 0)
    cli_checks.check_finite("--sparsity", args.sparsity)
    cli_checks.check_finite("--update-threshold", args.update_threshold, 0.0)
    cli_checks.check_finite("--pow-of-var-regrowing", args.pow_of_var_regrowing)
    device = cli_checks.check_device(args.device)
    objective, skip = resolve_objective(args)
    for choice in ([objective] if args.objective or args.paper else ["swap", "cov_window"]) + args.also_objective:
        cli_checks.check_backend(args.backend, device, choice)
    if args.also_objective and args.no_refine:
        raise ValueError("--also-objective adds refined runs; it cannot go with --no-refine")
    if args.no_baseline and args.no_refine:
        raise ValueError("--no-baseline with --no-refine leaves nothing to run (the baseline is the --no-refine run)")
    args.batch_size_asked = args.batch_size
    args.batch_size = cli_checks.batch_size_for_ranks(args.nsamples, args.batch_size, cli_checks.world_size())
    runs = [] if args.no_baseline else [(False, skip, objective)]
    runs += [] if args.no_refine else [(True, skip, objective)]
    runs += [(True, args.also_skip, also) for also in args.also_objective]
    profile = cli_options.load_profile(args.sparsity_profile)
    experts = expert_options(args)
    configs = []
    for refine, skip, objective in runs:
        try:
            configs.append(dk.PruneConfig(
                sparsity=args.sparsity, pattern=args.pattern, initial=args.initial, refine=refine, skip=skip,
                objective=objective, window=args.window, max_cycle_time=args.max_cycle_time,
                update_threshold=args.update_threshold, pow_of_var_regrowing=args.pow_of_var_regrowing,
                reconstruct=args.reconstruct and (refine or args.no_refine), bos=args.bos,  # baseline: only when asked
                sqrt="torch" if args.authors_sqrt else "exact", err_sum="torch" if args.authors_sum else "lanes",
                backend=args.backend, batch_size=args.batch_size, device=args.device,
                record_error=(args.record_error or bool(args.plot)) and (refine or args.no_refine),
                progress=not args.quiet, **experts,
                **cli_options.profile_kwargs(profile, args.owl_m, args.owl_lambda)))
        except (ValueError, TypeError) as exc:
            msg = str(exc)
            for field in ("pattern", "sparsity_profile", "owl_m", "owl_lambda", "sparsity", "skip", "initial",
                          "objective", "window", "batch_size", "backend"):
                if field in msg.split(",")[0]:
                    msg = f"--{field.replace('_', '-')} {getattr(args, field)}: {msg}"
                    break
            raise ValueError(msg) from None
    n, m = configs[0].prune_n, configs[0].prune_m
    if n and args.sparsity not in (0.5, n / m):
        raise ValueError(f"--sparsity {args.sparsity} with --pattern {args.pattern}: an N:M pattern prunes N of "
                         f"every M weights (sparsity {n / m:g}); --sparsity is for unstructured pruning")
    if args.sparse24:  # refuse before minutes of pruning, with the reason
        from dsnot_kernels.sparse24 import sparse24_backend
        if args.pattern != "2:4":
            raise ValueError(f"--sparse24 needs --pattern 2:4 (got {args.pattern})")
        why = sparse24_backend("cuda" if torch.cuda.is_available() else "cpu")[1]
        if why is not None:
            raise ValueError(f"--sparse24 refused: {why}")
    cli_checks.check_text_file("--calib", args.calib)
    args.eval_dataset = args.eval_file if args.eval_file in cli_options.DATASETS + cli_options.REFUSED_DATASETS \
        else None
    if args.eval_dataset is None and args.eval_file and args.eval_path:
        raise ValueError("--eval FILE and --eval-file FILE both name the evaluation text; give one")
    if args.eval_dataset is None:
        args.eval_file = args.eval_file or args.eval_path
    cli_options.check_eval(args.eval_dataset, args.eval_path if args.eval_dataset else args.eval_file, "--eval",
                           "--eval-file" if args.eval_dataset or args.eval_path else "--eval")
    args.tasks = cli_options.check_tasks(args.eval_tasks, args.eval_tasks_include, args.eval_tasks_limit)
    cli_checks.check_output_file("--json", args.json)
    cli_checks.check_output_file("--plot", args.plot)
    if args.save:
        try:
            check_save_target(args.save, args.overwrite)
        except OSError as exc:  # the message names the keyword of save_model: a CLI user has a flag
            raise ValueError(f"--save {exc}".replace("pass overwrite=True (--overwrite)", "pass --overwrite")) from None
    elif args.overwrite:
        raise ValueError("--overwrite needs --save DIR")
    cli_checks.check_model(args.model)
    return configs


def run(args, configs=None) -> dict:
    """Load, evaluate, prune (initial mask, then refined), evaluate; print the table. ``configs``:
    from ``check_args(args)`` (computed here when None)."""
    configs = check_args(args) if configs is None else configs
    rank, say = _start(args)
    model, tokenizer, model_desc, load_s, configs = _load(args, configs, say)
    data = cli_run.windows(args, model, tokenizer, configs)
    tasks = None if rank else getattr(args, "tasks", None)  # zero-shot tasks: rank 0 only
    result = {"model": model_desc, "bos": data.bos_rule.to_dict() | {"text": data.bos_rule.describe()},
              "calibration": f"{args.nsamples} x {args.seqlen} tokens: {data.text_desc['calibration']}",
              "evaluation": data.eval_desc or f"{data.n_windows} x {args.seqlen} tokens: "
                                              f"{data.text_desc['evaluation']}",
              "dtype": args.dtype, "load_time_s": load_s, "rows": [], "reports": []}
    cli_run.evaluate_and_prune(args, configs, model, tokenizer, data, tasks, result, say)
    cli_run.write(args, rank, model, tokenizer, result, say)
    return result


def _start(args):
    """``(rank, say)``: threads, torch.distributed from the environment (only rank 0 speaks and
    writes), the message function."""
    if args.threads:
        torch.set_num_threads(args.threads)
    from dsnot_kernels.pruning.distributed import init_from_env
    rank = init_from_env()  # under torchrun: every rank prunes its share
    if rank:
        args.quiet, args.save, args.json = True, None, None
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    if args.quiet:
        quiet_libraries()
    if args.batch_size != getattr(args, "batch_size_asked", args.batch_size):
        say(f"--batch-size {args.batch_size_asked} -> {args.batch_size}: {args.nsamples} samples give every one "
            f"of the {cli_checks.world_size()} ranks a batch (the statistics do not depend on the batch size)")
    return rank, say


def _load(args, configs, say):
    """``(model, tokenizer, description, seconds, configs)``; without --objective or --paper the
    configs get the "best" preset's objective for the model's widest sub-layer."""
    from dsnot_kernels.models import load_model

    t0 = time.perf_counter()
    try:
        model, tokenizer, model_desc = load_model(args.model, dtype=DTYPES[args.dtype])
    except (OSError, ValueError) as exc:  # not found on the hub, no network, not a model folder
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArgumentError(f"--model {args.model}: cannot be loaded: {first}") from exc
    load_s = time.perf_counter() - t0
    say(f"loaded {model_desc} ({args.dtype}) in {load_s:.1f} s")
    if args.objective is None and not args.paper:  # the "best" preset: by the widest sub-layer
        import dataclasses
        widest = widest_sublayer(model)
        objective, skip = resolve_objective(args, widest)
        own = len(configs) - len(args.also_objective)  # the --also-objective runs keep theirs
        configs = [dataclasses.replace(c, objective=objective, skip=skip) if k < own else c
                   for k, c in enumerate(configs)]
        say(f"objective {objective}, skip {skip} (widest sub-layer {widest} columns; --paper: the authors' dsnot, mlp)")
    return model, tokenizer, model_desc, load_s, configs


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configs = check_args(args)  # before anything loads
    except ValueError as exc:
        parser.error(str(exc))
    try:
        run(args, configs)
    except ArgumentError as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        from dsnot_kernels.pruning.distributed import close_own_group
        close_own_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
