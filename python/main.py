"""The authors' ``main.py`` command line (zyxxmu/DSnoT), run on dsnot_kernels.

Their users' scripts run unchanged, e.g.::

    python python/main.py --model PATH --prune_method DSnoT --initial_method wanda \\
        --sparsity_ratio 0.5 --sparsity_type unstructured --max_cycle_time 50 \\
        --update_threshold 0.1 --pow_of_var_regrowing 1 [--skip_layer mlp] [--save_model DIR]

Differences, all because this runs offline: calibration text is ``--calib FILE`` or the standard
library's pydoc_data.topics (first half) instead of C4, perplexity is on ``--eval FILE`` or its
second half instead of WikiText-2 (``--eval_dataset`` is accepted and reported, not downloaded);
``--model`` may be omitted for the embedded SmolLM2-135M-Instruct. ``--eval_zero_shot`` is
accepted and ignored (no harness offline). Flags that only steered their GPU placement are ignored.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from dsnot_kernels.ops import OBJECTIVES


def parse(argv=None):
    p = argparse.ArgumentParser(description="DSnoT (authors' flags) on dsnot_kernels")
    p.add_argument("--model", type=str, default=None, help="model path or name (default: embedded SmolLM2-135M)")
    p.add_argument("--model_type", type=str, default=None, help="accepted; the architecture is detected")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows")
    p.add_argument("--nsamples", type=int, default=128, help="calibration samples")
    p.add_argument("--eval_dataset", type=str, default="wikitext2", choices=["wikitext2", "c4", "ptb"])
    p.add_argument("--sparsity_ratio", type=float, default=0, help="sparsity ratio")
    p.add_argument("--sparsity_type", type=str, default="unstructured", choices=["unstructured", "4:8", "2:4"])
    p.add_argument("--prune_method", type=str, default="DSnoT",
                   choices=["wanda", "sparsegpt", "magnitude", "DSnoT", "dense"])
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
                            "up_proj", "fc1", "fc2", "out_proj"])
    p.add_argument("--without_same_sign", type=lambda s: str(s).lower() not in ("0", "false", "no", ""),
                   default=True)
    p.add_argument("--get_time_overhead", action="store_true")
    p.add_argument("--output_results_file", default="results.txt", type=str)
    p.add_argument("--cache_dir", default="llm_weights", type=str, help="accepted; models load from --model")
    p.add_argument("--save_model", type=str, default=None)
    p.add_argument("--eval_zero_shot", action="store_true", help="accepted and ignored (offline)")
    # extras of this project
    p.add_argument("--seqlen", type=int, default=2048, help="calibration sample and evaluation window length")
    p.add_argument("--calib", default=None, help="calibration text file")
    p.add_argument("--eval", dest="eval_file", default=None, help="evaluation text file")
    p.add_argument("--eval_windows", type=int, default=0, help="evaluate on the first N windows (0 = all)")
    p.add_argument("--objective", default="dsnot", choices=list(OBJECTIVES))
    p.add_argument("--window", type=int, default=100, help="candidates per list for objective cov_window")
    p.add_argument("--backend", default=None)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--device", default=None)
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    import dsnot_kernels as dk
    from dsnot_kernels.data import calibration_windows, load_texts, tokenize
    from dsnot_kernels.models import load_model, save_model

    np.random.seed(args.seed)
    torch.random.manual_seed(args.seed)
    prune_n, prune_m = 0, 0
    if args.sparsity_type != "unstructured":
        assert args.sparsity_ratio == 0.5, "sparsity ratio must be 0.5 for structured N:M sparsity"
        prune_n, prune_m = map(int, args.sparsity_type.split(":"))
    if args.eval_zero_shot:
        print("--eval_zero_shot: ignored (zero-shot tasks need downloads)")
    model, tokenizer, desc = load_model(args.model)
    if args.device:
        model.to(args.device)
    print(f"loaded {desc}")
    cal_text, eval_text, text_desc = load_texts(args.calib, args.eval_file)

    prune_time = 0.0
    if args.sparsity_ratio != 0 and args.prune_method != "dense":
        initial = args.initial_method if args.prune_method == "DSnoT" else args.prune_method
        refine = args.prune_method == "DSnoT" and not args.without_DSnoT
        skip_sub = () if args.skip_sub_layer == "no_skip" else (args.skip_sub_layer,)
        config = dk.PruneConfig(
            sparsity=args.sparsity_ratio, pattern=args.sparsity_type, initial=initial, refine=refine,
            skip=args.skip_layer, skip_sublayers=skip_sub, max_cycle_time=args.max_cycle_time,
            update_threshold=args.update_threshold, pow_of_var_regrowing=args.pow_of_var_regrowing,
            without_same_sign=args.without_same_sign, objective=args.objective, window=args.window,
            backend=args.backend,
            batch_size=args.batch_size)
        calib = calibration_windows(tokenize(tokenizer, cal_text), args.nsamples, args.seqlen, args.seed)
        print(f"pruning starts: {args.prune_method} ({text_desc['calibration']}, {args.nsamples} x {args.seqlen})")
        t0 = time.perf_counter()
        report = dk.prune_model(model, calib, config)
        prune_time = time.perf_counter() - t0
        if args.get_time_overhead:
            print(f"time overhead: mask computation {report['mask_time_s']:.2f} s, total {prune_time:.1f} s")
    print("*" * 30)
    sparsity = _check_sparsity(model)
    print(f"sparsity sanity check {sparsity:.4f}")
    print("*" * 30)
    print(f"evaluating on {text_desc['evaluation']} (--eval_dataset {args.eval_dataset} is not downloaded)")
    ppl = dk.perplexity(model, tokenize(tokenizer, eval_text), args.seqlen,
                        max_windows=args.eval_windows or None)
    print(f"\nppl on {args.eval_dataset if args.eval_file is None else args.eval_file}: {ppl}\n")
    with open(args.output_results_file, "a") as f:
        f.write(f"{args.model}\t{args.prune_method}\t{args.initial_method}\t{args.sparsity_type}\t"
                f"{args.sparsity_ratio}\t{sparsity:.4f}\t{ppl:.4f}\t{prune_time:.1f}\n")
    if args.save_model:
        save_model(model, tokenizer, args.save_model)
        print(f"saved {args.save_model}")
    return ppl


def _check_sparsity(model):
    from dsnot_kernels.pruning import find_blocks, find_sublayers

    _, blocks = find_blocks(model)
    zeros = total = 0
    for i, block in enumerate(blocks):
        bz = bt = 0
        for m in find_sublayers(block).values():
            bz += int((m.weight.data == 0).sum())
            bt += m.weight.numel()
        print(f"layer {i} sparsity {bz / bt:.6f}")
        zeros, total = zeros + bz, total + bt
    return zeros / total


if __name__ == "__main__":
    main(sys.argv[1:])
