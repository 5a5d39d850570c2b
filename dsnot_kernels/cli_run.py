"""The steps of one ``dsnot-prune`` run after the model is loaded (``cli.run``): the windows, the
evaluations and prunes (the result's rows), and what is written."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from dsnot_kernels import cli_options, cli_report
from dsnot_kernels.cli_checks import ArgumentError
from dsnot_kernels.cli_experts import describe_experts


def windows(args, model, tokenizer, configs):
    """The BOS rule, the calibration windows and the evaluation ids of this run (a namespace)."""
    from types import SimpleNamespace

    from dsnot_kernels.bos import resolve_bos
    from dsnot_kernels.data import calibration_windows, load_texts, tokenize

    dataset = getattr(args, "eval_dataset", None)
    cal_text, eval_text, text_desc = load_texts(args.calib, None if dataset else args.eval_file)
    try:
        bos_rule = resolve_bos(args.bos, tokenizer=tokenizer, model=model)
    except ValueError as exc:
        raise ArgumentError(f"--bos {args.bos}: {exc}") from None
    bos_kw = dict(bos=args.bos, tokenizer=tokenizer, bos_token_id=bos_rule.bos_token_id)
    for config in configs:  # the driver checks the windows against the tokenizer's BOS id
        config.bos_token_id = bos_rule.bos_token_id
    try:
        calib = calibration_windows(tokenize(tokenizer, cal_text), args.nsamples, args.seqlen, args.seed, **bos_kw)
    except ValueError as exc:
        raise ArgumentError(f"--calib: {exc} (--seqlen {args.seqlen})") from None
    try:
        eval_ids, eval_desc, windows = cli_options.evaluation_ids(dataset, args.eval_path, tokenizer, eval_text,
                                                                  args.seqlen, args.eval_windows)
    except ValueError as exc:
        raise ArgumentError(f"--eval {dataset}: {exc}") from None
    body = args.seqlen - 1 if bos_rule.use else args.seqlen  # a BOS window: [BOS] + seqlen - 1 text tokens
    eval_tokens = eval_ids.numel() - int(bos_rule.use and eval_ids.numel() > 0
                                         and int(eval_ids[0]) == bos_rule.bos_token_id)
    if eval_tokens < body:
        raise ArgumentError(f"--eval: {eval_tokens} evaluation tokens are fewer than one window of "
                            f"--seqlen {args.seqlen}")
    return SimpleNamespace(calib=calib, eval_ids=eval_ids, eval_desc=eval_desc, windows=windows, bos_kw=bos_kw,
                           bos_rule=bos_rule, text_desc=text_desc,
                           n_windows=min(eval_tokens // body, windows or 10**9))


def evaluate_and_prune(args, configs, model, tokenizer, data, tasks, result, say) -> None:
    """The dense row, then each config pruned from the dense weights and evaluated (rows of
    ``result``), then the 2:4 sparse row (--sparse24)."""
    import dsnot_kernels as dk

    def ppl(what):
        t = time.perf_counter()
        value = dk.perplexity(model, data.eval_ids, args.seqlen, max_windows=data.windows,
                              progress=not args.quiet, desc=f"perplexity ({what})", **data.bos_kw)
        return value, time.perf_counter() - t

    def zero_shot(label):
        if tasks:
            result.setdefault("zero_shot", []).append(cli_options.zero_shot(
                tasks, args.eval_tasks_include, args.eval_tasks_limit, model, tokenizer, label))

    if not args.no_dense:
        value, dt = ppl("dense")
        result["rows"].append({"method": "dense", "ppl": value, "prune_time_s": 0.0, "mask_time_s": 0.0,
                               "eval_time_s": dt, "sparsity": 0.0, "swaps": 0})
        say(f"dense perplexity {value:.3f}")
        zero_shot("dense")
    dense = {k: v.detach().clone() for k, v in model.state_dict().items()} if len(configs) > 1 else None
    for k, config in enumerate(configs):
        if k > 0:
            model.load_state_dict(dense)
        if k == len(configs) - 1:
            dense = None
        label = cli_report.label(args.initial, config.refine, config.objective, config.skip) + (
            " + reconstruct" if config.reconstruct else "")
        if config.sparsity_profile != "uniform":
            label += " + OWL" if config.sparsity_profile == "owl" else " (per-layer sparsity)"
        say(f"pruning: {label}")
        try:
            report = dk.prune_model(model, data.calib, config)
        except ValueError as exc:  # refused before any work, e.g. --expert-tokens all on nn.ModuleList experts
            raise ArgumentError(str(exc).replace('expert_tokens="all"', "--expert-tokens all")) from None
        for line in describe_experts(report):
            say(line)
        value, dt = ppl(label)
        say(f"{label}: perplexity {value:.3f}")
        result["rows"].append({"method": label, "ppl": value, "prune_time_s": report["total_time_s"],
                               "mask_time_s": report["mask_time_s"], "eval_time_s": dt,
                               "sparsity": report["sparsity"], "swaps": report["swaps"]})
        result["reports"].append(report)
        zero_shot(label)
    if args.sparse24:
        model.to("cuda", torch.float16)
        result["sparse24"] = dk.to_sparse_24(model, dtype=torch.float16, min_size=args.sparse24_min_size)
        value, dt = ppl("2:4 sparse fp16")
        say(f"2:4 semi-structured (fp16): perplexity {value:.3f}")
        last = result["rows"][-1]
        result["rows"].append({"method": last["method"] + " [2:4 sparse fp16]", "ppl": value,
                               "prune_time_s": 0.0, "mask_time_s": 0.0, "eval_time_s": dt,
                               "sparsity": last["sparsity"], "swaps": last["swaps"]})


def write(args, rank, model, tokenizer, result, say) -> None:
    """The table (rank 0), --plot, --save, --json."""
    from dsnot_kernels.models import save_model

    if not rank:
        print(cli_report.format_table(result))
        extra = cli_report.format_extra(result)
        if extra:
            print("\n" + extra)
    if args.plot and not rank:
        cli_report.plot_errors(result["reports"][-1], args.plot)
        say(f"wrote {args.plot}")
    if args.save:
        say(f"saved {save_model(model, tokenizer, args.save, overwrite=args.overwrite)}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        say(f"wrote {args.json}")
