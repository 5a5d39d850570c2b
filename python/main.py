"""The authors' ``main.py`` command line (zyxxmu/DSnoT), run on dsnot_kernels.

Their users' scripts run unchanged, e.g.::

    python python/main.py --model /path/to/hf_model --prune_method DSnoT --initial_method wanda \\
        --sparsity_ratio 0.5 --sparsity_type unstructured --max_cycle_time 50 \\
        --update_threshold 0.1 --pow_of_var_regrowing 1 [--skip_layer mlp] [--save_model DIR]

Differences, all because this runs offline: calibration text is ``--calib FILE`` or the standard
library's pydoc_data.topics (first half) instead of C4; perplexity is on pydoc_data.topics' second
half by default, on ``--eval_dataset FILE`` (or ``--eval FILE``), or on ``--eval_dataset wikitext2``
with the authors' protocol (through ``datasets``, or a local copy: ``--eval_dataset_path``); the result
line names the text it was measured on. c4/ptb are refused. ``--eval_zero_shot`` runs the authors'
zero-shot tasks (or ``--eval_tasks``) through lm-eval-harness on the pruned model in memory.
OWL's per-layer sparsity: ``--prune_method wanda_owl`` (OWL's name) or ``--sparsity_profile owl``,
with OWL's ``--Hyper_m`` and ``--Lamda``.
``--model`` may be omitted for the embedded SmolLM2-135M-Instruct. As the authors' script, each run appends its result to
``--output_results_file`` (default results.txt in the current folder); the path is printed.
``--save_model DIR`` refuses a non-empty DIR unless ``--overwrite``. Every argument that can be
checked without the model is checked before it loads (exit status 2). Flags that only steered
their GPU placement are accepted and ignored. The wanda metric's square root is ATen's
``torch.sqrt`` as in their code (``PruneConfig(sqrt="torch")``; ``--exact_sqrt`` for the correctly
rounded one), and each row's reconstruction error is summed with ATen's ``torch.sum`` as in their
code (``PruneConfig(err_sum="torch")``, the "torch" backend; ``--lane_sum`` for the contract's fixed
order, which a ``--backend`` other than torch implies), and the N:M mask of a skipped sub-layer is
``torch.topk``'s pick as theirs (``nm_ties="topk"``), so that on CPU the masks are theirs bit for bit.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dsnot_kernels import cli_checks, cli_options
from dsnot_kernels.cli_experts import add_expert_flags, describe_experts, expert_options
from dsnot_kernels.ops import OBJECTIVES

DATASET_NAMES = ("wikitext2", "c4", "ptb")
# the authors' (Wanda's) --eval_zero_shot tasks, 0-shot
ZERO_SHOT_TASKS = "boolq,rte,hellaswag,winogrande,arc_challenge,arc_easy,openbookqa"


def build_parser():
    p = argparse.ArgumentParser(prog="main.py", description="DSnoT (authors' flags) on dsnot_kernels")
    p.add_argument("--model", type=str, default=None, help="model path or name (default: embedded SmolLM2-135M)")
    p.add_argument("--model_type", type=str, default=None, help="accepted; the architecture is detected")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows")
    p.add_argument("--nsamples", type=int, default=128, help="calibration samples")
    p.add_argument("--eval_dataset", type=str, default=None, metavar="FILE",
                   help="evaluation text file, or wikitext2 (the authors' protocol; datasets or "
                        "--eval_dataset_path) (default: pydoc_data.topics, second half); c4, ptb are refused")
    p.add_argument("--sparsity_ratio", type=float, default=0, help="sparsity ratio")
    p.add_argument("--sparsity_type", type=str, default="unstructured", choices=["unstructured", "4:8", "2:4"])
    p.add_argument("--prune_method", type=str, default="DSnoT",
                   choices=["wanda", "sparsegpt", "magnitude", "DSnoT", "dense", "wanda_owl"])
    p.add_argument("--initial_method", type=str, default="wanda", choices=["wanda", "sparsegpt", "magnitude"])
    p.add_argument("--max_cycle_time", type=int, default=None,
                   help="default: the objective's (50, the authors'; swap: max(64, cols // 4))")
    p.add_argument("--without_DSnoT", action="store_true")
    p.add_argument("--update_threshold", type=float, default=0.1)
    p.add_argument("--pow_of_var_regrowing", type=float, default=1)
    p.add_argument("--pow_of_var_pruning", type=float, default=1, help="accepted; unused by DSnoT (as theirs)")
    p.add_argument("--skip_layer", type=str, default="mlp", choices=["no_skip", "mlp", "self_attn"])
    p.add_argument("--skip_sub_layer", type=str, default="no_skip",
                   choices=["no_skip", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj",
                            "up_proj", "fc1", "fc2", "out_proj", "qkv_proj", "gate_up_proj"],
                   help="one more sub-layer (last name part) that gets the initial mask only; qkv_proj and "
                        "gate_up_proj are Phi-3's fused layers")
    p.add_argument("--without_same_sign", type=lambda s: str(s).lower() not in ("0", "false", "no", ""),
                   default=True)
    p.add_argument("--get_time_overhead", action="store_true")
    p.add_argument("--output_results_file", default="results.txt", type=str,
                   help="one line per run is appended here (default results.txt in the current folder)")
    p.add_argument("--cache_dir", default="llm_weights", type=str, help="accepted; models load from --model")
    p.add_argument("--save_model", type=str, default=None, help="save the pruned model to this new or empty folder")
    p.add_argument("--overwrite", action="store_true", help="with --save_model: replace the model files in a "
                   "non-empty folder (other files are kept)")
    p.add_argument("--eval_zero_shot", action="store_true", help="zero-shot accuracy through lm-eval-harness "
                   "(the authors' tasks, or --eval_tasks) on the pruned model in memory")
    p.add_argument("--Hyper_m", type=float, default=5.0, help="OWL's M (default 5, OWL's README settings)")
    p.add_argument("--Lamda", type=float, default=0.08, help="OWL's lambda (default 0.08)")
    # extras of this project
    p.add_argument("--seqlen", type=int, default=2048, help="calibration sample and evaluation window length")
    p.add_argument("--calib", default=None, help="calibration text file")
    p.add_argument("--eval", dest="eval_file", default=None, metavar="FILE",
                   help="the same as --eval_dataset FILE (this project's spelling); give one of the two")
    p.add_argument("--eval_windows", type=int, default=0, help="evaluate on the first N windows (0 = all)")
    p.add_argument("--objective", default="dsnot", choices=list(OBJECTIVES))
    p.add_argument("--window", type=int, default=100, help="candidates per list for objective cov_window")
    p.add_argument("--backend", default=None)
    p.add_argument("--reconstruct", action="store_true", help="re-solve the kept weights after each final mask")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--exact_sqrt", action="store_true",
                   help="correctly rounded square root in the wanda metric (default here: torch.sqrt, as the "
                        "authors' code; they differ on CPU only)")
    p.add_argument("--lane_sum", action="store_true",
                   help="sum each row's reconstruction error in the contract's fixed order (every backend; "
                        "default here: torch.sum, as the authors' code, on the torch backend)")
    p.add_argument("--device", default=None)
    p.add_argument("--bos", default="auto", choices=["auto", "always", "never"],
                   help="calibration and evaluation windows start with BOS: auto (where the tokenizer adds one), "
                        "always, never (plain slices of the token stream, as the authors' script)")
    p.add_argument("--eval_dataset_path", default=None, help="local copy of --eval_dataset wikitext2 (wiki.test.raw, "
                   "parquet/arrow file or folder)")
    p.add_argument("--eval_tasks", default=None, help=f"lm-eval tasks of --eval_zero_shot (default {ZERO_SHOT_TASKS})")
    p.add_argument("--eval_tasks_include", default=None, help="folder of lm-eval task YAML files")
    p.add_argument("--eval_tasks_limit", type=int, default=None, help="at most N documents per task")
    p.add_argument("--sparsity_profile", default="uniform", help="uniform, owl, or a JSON file (per-block list or dict)")
    add_expert_flags(p, sep="_")  # --expert_tokens, --expert_min_tokens, ... (dsnot_kernels/cli_experts.py)
    return p


def initial_of(args) -> str:
    """The initial mask's method of the run: DSnoT's --initial_method, else the --prune_method
    itself (sparsegpt, wanda, magnitude), "-" for dense or sparsity 0."""
    if args.prune_method == "dense" or args.sparsity_ratio == 0:
        return "-"
    return args.initial_method if args.prune_method == "DSnoT" else args.prune_method


def results_line(model_desc, args, sparsity, ppl, prune_time) -> str:
    """One line of --output_results_file: model (as loaded: the embedded model's name when no
    --model), method, initial method, type, asked and reached sparsity, perplexity, prune seconds."""
    return (f"{model_desc}\t{args.prune_method}\t{initial_of(args)}\t{args.sparsity_type}\t"
            f"{args.sparsity_ratio}\t{sparsity:.4f}\t{ppl:.4f}\t{prune_time:.1f}\n")


def parse(argv=None):
    return build_parser().parse_args(argv)


def check(args):
    """Every check that needs no model; returns the PruneConfig (None when nothing is pruned).
    Raises ValueError with a one-line reason."""
    import dsnot_kernels as dk
    from dsnot_kernels.models import check_save_target

    args.dataset = None
    if args.eval_dataset is not None:
        if args.eval_dataset in DATASET_NAMES and not Path(args.eval_dataset).exists():
            args.dataset = args.eval_dataset
            cli_options.check_eval(args.dataset, args.eval_dataset_path, "--eval_dataset", "--eval_dataset_path")
        if args.eval_file is not None:
            raise ValueError("--eval_dataset and --eval both name the evaluation text; give one")
        if args.dataset is None:
            args.eval_file = args.eval_dataset
    if args.eval_dataset_path is not None and args.dataset is None:
        raise ValueError("--eval_dataset_path is the local copy of --eval_dataset wikitext2")
    args.tasks = cli_options.check_tasks(args.eval_tasks or ZERO_SHOT_TASKS if args.eval_zero_shot else None,
                                         args.eval_tasks_include, args.eval_tasks_limit, "--eval_tasks")
    if args.eval_tasks and not args.eval_zero_shot:
        raise ValueError("--eval_tasks needs --eval_zero_shot")
    profile = "owl" if args.prune_method == "wanda_owl" else cli_options.load_profile(args.sparsity_profile,
                                                                                      "--sparsity_profile")
    if args.sparsity_type != "unstructured" and args.sparsity_ratio != 0.5:
        raise ValueError(f"--sparsity_type {args.sparsity_type} needs --sparsity_ratio 0.5 (an N:M pattern prunes "
                         f"N of every M weights), got {args.sparsity_ratio}")
    cli_checks.check_positive("--nsamples", args.nsamples)
    cli_checks.check_positive("--seqlen", args.seqlen, 2)
    cli_checks.check_positive("--eval_windows", args.eval_windows, 0)
    cli_checks.check_positive("--batch_size", args.batch_size)
    cli_checks.check_positive("--max_cycle_time", args.max_cycle_time, 0)
    cli_checks.check_finite("--update_threshold", args.update_threshold, 0.0)
    cli_checks.check_finite("--pow_of_var_regrowing", args.pow_of_var_regrowing)
    device = cli_checks.check_device(args.device)
    cli_checks.check_backend(args.backend, device, args.objective)
    experts = expert_options(args, sep="_")
    config = None
    if args.sparsity_ratio != 0 and args.prune_method != "dense":
        # the authors' flags: --initial_method sparsegpt = SparseGPT's saliency for DSnoT's initial mask
        # (no weight update); --prune_method sparsegpt = SparseGPT as published (mask + weight updates)
        initial = ({"sparsegpt": "sparsegpt_metric"}.get(args.initial_method, args.initial_method)
                   if args.prune_method == "DSnoT" else {"wanda_owl": "wanda"}.get(args.prune_method, args.prune_method))
        refine = args.prune_method == "DSnoT" and not args.without_DSnoT
        skip_sub = () if args.skip_sub_layer == "no_skip" else (args.skip_sub_layer,)
        try:
            config = dk.PruneConfig(
                sparsity=args.sparsity_ratio, pattern=args.sparsity_type, initial=initial, refine=refine,
                skip=args.skip_layer, skip_sublayers=skip_sub, max_cycle_time=args.max_cycle_time,
                update_threshold=args.update_threshold, pow_of_var_regrowing=args.pow_of_var_regrowing,
                without_same_sign=args.without_same_sign, objective=args.objective, window=args.window,
                backend=args.backend, reconstruct=args.reconstruct, batch_size=args.batch_size, bos=args.bos,
                sqrt="exact" if args.exact_sqrt else "torch", err_sum=_err_sum(args), nm_ties="topk", **experts,
                **cli_options.profile_kwargs(profile, args.Hyper_m, args.Lamda))
        except (ValueError, TypeError) as exc:
            raise ValueError(str(exc).replace("sparsity must", "--sparsity_ratio must").replace(
                "owl_m", "--Hyper_m").replace("owl_lambda", "--Lamda")) from None
    cli_checks.check_text_file("--calib", args.calib)
    if args.dataset is None:
        cli_checks.check_text_file("--eval_dataset" if args.eval_dataset else "--eval", args.eval_file)
    cli_checks.check_output_file("--output_results_file", args.output_results_file)
    if args.save_model:
        try:
            check_save_target(args.save_model, args.overwrite)
        except OSError as exc:
            raise ValueError(f"--save_model {exc}") from None
    cli_checks.check_model(args.model)
    return config


def _err_sum(args) -> str:
    """The authors' torch.sum order of the row errors, on the torch backend (the only one that has
    it), unless --lane_sum or a --backend other than torch asks for the contract's order."""
    if args.lane_sum:
        return "lanes"
    if args.backend not in (None, "torch"):
        print(f"note: --backend {args.backend} sums the row errors in the contract's lane order "
              "(the authors' torch.sum order is the torch backend's only)", file=sys.stderr)
        return "lanes"
    return "torch"


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = check(args)
    except ValueError as exc:
        parser.error(str(exc))
    import dsnot_kernels as dk
    from dsnot_kernels.data import calibration_windows, load_texts, tokenize
    from dsnot_kernels.models import load_model, save_model

    np.random.seed(args.seed)
    torch.random.manual_seed(args.seed)
    try:
        model, tokenizer, desc = load_model(args.model)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        parser.error(f"--model {args.model}: cannot be loaded: {first}")
    if args.device:
        model.to(args.device)
    print(f"loaded {desc}")
    cal_text, eval_text, text_desc = load_texts(args.calib, args.eval_file)
    from dsnot_kernels.bos import resolve_bos
    try:
        bos_rule = resolve_bos(args.bos, tokenizer=tokenizer, model=model)
    except ValueError as exc:
        parser.error(f"--bos {args.bos}: {exc}")
    bos_kw = dict(bos=args.bos, tokenizer=tokenizer, bos_token_id=bos_rule.bos_token_id)
    print(f"windows: {bos_rule.describe()}")

    prune_time = 0.0
    if config is not None:
        config.bos_token_id = bos_rule.bos_token_id
        calib = calibration_windows(tokenize(tokenizer, cal_text), args.nsamples, args.seqlen, args.seed, **bos_kw)
        print(f"pruning starts: {args.prune_method} ({text_desc['calibration']}, {args.nsamples} x {args.seqlen})")
        t0 = time.perf_counter()
        report = dk.prune_model(model, calib, config)
        prune_time = time.perf_counter() - t0
        for line in describe_experts(report):
            print(line)
        if args.get_time_overhead:
            print(f"time overhead: mask computation {report['mask_time_s']:.2f} s, total {prune_time:.1f} s")
        if report["sparsity_profile"]["kind"] != "uniform":
            from dsnot_kernels.pruning.profile import format_blocks
            print(format_blocks(report))
    print("*" * 30)
    sparsity = _check_sparsity(model)
    print(f"sparsity sanity check {sparsity:.4f}")
    print("*" * 30)
    try:
        eval_ids, eval_desc, windows = cli_options.evaluation_ids(args.dataset, args.eval_dataset_path, tokenizer,
                                                                  eval_text, args.seqlen, args.eval_windows, False)
    except ValueError as exc:
        parser.error(f"--eval_dataset {args.dataset}: {exc}")
    eval_desc = eval_desc or text_desc["evaluation"]
    print(f"evaluating on {eval_desc}")
    ppl = dk.perplexity(model, eval_ids, args.seqlen, max_windows=windows, progress=True, **bos_kw)
    print(f"\nppl on {eval_desc}: {ppl}  (lower is better; BOS {bos_rule.rule}: "
          f"{'used' if bos_rule.use else 'not used'})\n")
    if args.tasks:
        from dsnot_kernels import lm_eval_adapter as lea
        zs = cli_options.zero_shot(args.tasks, args.eval_tasks_include, args.eval_tasks_limit, model, tokenizer,
                                   args.prune_method)
        print(lea.format_table(zs["tasks"], zs["label"]) + "\n")
    results = Path(args.output_results_file).resolve()
    with open(results, "a") as f:
        f.write(results_line(desc, args, sparsity, ppl, prune_time))
    print(f"result appended to {results} (--output_results_file)")
    if args.save_model:
        save_model(model, tokenizer, args.save_model, overwrite=args.overwrite)
        print(f"saved {args.save_model}")
    return ppl


def _check_sparsity(model):
    """Zeros over every weight the driver prunes (linear sub-layers and every expert projection;
    routers excluded: dsnot_kernels.pruning.coverage.plan_block), per block and in all."""
    from dsnot_kernels.pruning import find_blocks
    from dsnot_kernels.pruning.coverage import plan_block

    _, blocks = find_blocks(model)
    zeros = total = 0
    for i, block in enumerate(blocks):
        plan = plan_block(block, f"block {i}")
        weights = [m.weight.data for m in plan.dense.values()]
        weights += [es.weight(n) for es in plan.experts for n in es.projections]
        bz = sum(int((w == 0).sum()) for w in weights)
        bt = sum(w.numel() for w in weights)
        print(f"layer {i} sparsity {bz / bt:.6f}")
        zeros, total = zeros + bz, total + bt
    return zeros / total


if __name__ == "__main__":
    main(sys.argv[1:])
