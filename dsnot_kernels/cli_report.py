"""What ``dsnot-prune`` prints and draws: the result table, the zero-shot and per-block tables, and
the per-sub-layer error plot (``--plot``)."""
from __future__ import annotations

LEGEND = ("perplexity: lower is better. swaps: accepted DSnoT swaps (one pruned weight regrown, one kept "
          "weight pruned), all layers.\nprune s: wall time of the whole layer-by-layer prune (forward "
          "passes, statistics, masks). masks s: the part spent choosing masks (refine_mask).")


def label(initial, refine, objective, skip):
    name = {"wanda": "Wanda", "magnitude": "Magnitude", "sparsegpt": "SparseGPT",
            "sparsegpt_metric": "SparseGPT metric"}[initial]
    if not refine:
        return name
    return f"{name} + DSnoT" + (f" ({objective})" if objective != "dsnot" else "") + f" [skip={skip}]"


def plot_errors(report, path):
    """Per-sub-layer output error (mean² and total MSE), initial vs refined mask, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subs = [e for e in report["sublayers"] if "error" in e]
    if not subs:
        raise ValueError("the report has no recorded errors (prune with record_error=True)")
    x = range(len(subs))
    fig, axes = plt.subplots(3, 1, figsize=(max(8, len(subs) * 0.12), 9), sharex=True)
    for ax, key, title in ((axes[0], "mean_sq", "mean² of the output error"),
                           (axes[1], "mse", "total output MSE (mean² + variance)")):
        ax.semilogy(x, [e["error"]["initial"][key] for e in subs], ".-", lw=0.8, label="initial mask")
        ax.semilogy(x, [e["error"]["refined"][key] for e in subs], ".-", lw=0.8, label="refined mask")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ratio = lambda e, key: e["error"]["refined"][key] / max(e["error"]["initial"][key], 1e-300)  # noqa: E731
    axes[2].semilogy(x, [ratio(e, "mean_sq") for e in subs], ".-", lw=0.8, label="mean²")
    axes[2].semilogy(x, [ratio(e, "mse") for e in subs], ".-", lw=0.8, label="total MSE")
    axes[2].axhline(1.0, color="gray", lw=0.8)
    axes[2].set_title("refined / initial (below 1: refinement helped)", fontsize=10)
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    ticks = [k for k, e in enumerate(subs) if k == 0 or e["block"] != subs[k - 1]["block"]]
    axes[2].set_xticks(ticks)
    axes[2].set_xticklabels([str(subs[k]["block"]) for k in ticks], fontsize=7)
    axes[2].set_xlabel("block (sub-layers in order within each block)")
    cfg = report["config"]
    fig.suptitle(f"{report['model']}: {cfg['pattern']} {cfg['sparsity']}, initial {cfg['initial']}, "
                 f"objective {cfg['objective']}, skip {cfg['skip']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(result) -> str:
    lines = [f"model: {result['model']}", f"calibration: {result['calibration']}",
             f"evaluation: {result['evaluation']}"]
    if "bos" in result:
        lines.append(f"windows: {result['bos']['text']}")
    lines += ["",
              f"| {'method':<40} | {'perplexity':>10} | {'sparsity':>8} | {'swaps':>8} | "
              f"{'prune s':>8} | {'masks s':>8} |",
              f"|{'-' * 42}|{'-' * 12}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']:<40} | {r['ppl']:>10.3f} | {r['sparsity']:>8.4f} | {r['swaps']:>8d} | "
                     f"{r['prune_time_s']:>8.1f} | {r['mask_time_s']:>8.2f} |")
    return "\n".join(lines + ["", LEGEND])


def format_extra(result) -> str:
    """The zero-shot tables and the per-block sparsities of a non-uniform profile (last run)."""
    from dsnot_kernels.pruning.profile import format_blocks
    parts = []
    if result.get("zero_shot"):
        from dsnot_kernels import lm_eval_adapter as lea
        parts += [lea.format_table(z["tasks"], z["label"]) for z in result["zero_shot"]]
    reports = result.get("reports") or []
    if reports and reports[-1].get("sparsity_profile", {}).get("kind", "uniform") != "uniform":
        parts.append(format_blocks(reports[-1]))
    return "\n\n".join(parts)
