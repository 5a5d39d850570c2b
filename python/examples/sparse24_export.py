"""2:4 pruning -> validation -> semi-structured export for sparse tensor cores.

Prunes a small fp16 MLP to 2:4 with DSnoT, checks every layer with ``check_nm`` and converts it with
``to_sparse_24``: on an Ampere/Hopper GPU the layers become ``SparseSemiStructuredTensor`` weights and
the outputs are compared with the masked dense model; on CPU it does a dry run and prints the reason
it cannot convert there. Runs on CPU in seconds.

    python python/examples/sparse24_export.py
"""
import json

import torch
from torch import nn

import dsnot_kernels as dk
from dsnot_kernels.sparse24 import sparse24_backend


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 1024), nn.GELU(), nn.Linear(1024, 512), nn.GELU(), nn.Linear(512, 10))
    data = torch.randn(4, 32, 512) + torch.randn(512)
    with torch.no_grad():  # prune the two big layers 2:4, layer by layer on their own inputs
        x = data
        for layer in model:
            if isinstance(layer, nn.Linear) and layer.out_features > 10:
                stats = dk.CalibrationStats(layer.in_features)
                stats.add_batch(x)
                mask = dk.refine_mask(layer.weight, stats.sum_metric_row, stats.var, stats.scaler_row,
                                      prune_n=2, prune_m=4)
                layer.weight.masked_fill_(mask, 0)
                dk.check_nm(layer.weight, 2, 4)   # raises with the first offending rows if not 2:4
            x = layer(x)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device, torch.float16)
    can_convert = sparse24_backend(device)[1] is None
    x = data.to(device, torch.float16)
    with torch.no_grad():
        dense = model(x)
        report = dk.to_sparse_24(model, min_size=256, dry_run=not can_convert)
        json.dumps(report)  # the report is JSON-serialisable
        print(f"backend {report['backend']}, dtype {report['dtype']}, dry run {report['dry_run']}")
        if report["refusal"]:
            print(f"  refusal: {report['refusal']}")
        for c in report["converted"]:
            print(f"  {'would convert' if report['dry_run'] else 'converted'} {c['name']} {c['shape']}")
        for s in report["skipped"]:
            print(f"  skipped {s['name']} {s['shape']}: {s['reason']}")
        if can_convert:
            err = float((model(x) - dense).abs().max())
            print(f"max |sparse - dense| = {err:.4f}")
    assert [c["name"] for c in report["converted"]] == ["0", "2"]
    print("done")


if __name__ == "__main__":
    main()
