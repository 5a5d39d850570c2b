"""torch.ao.pruning users: DSnoT as a sparsifier (prepare -> calibrate -> step -> squash_mask).

Same life cycle as torchao's WandaSparsifier; masks from ``dsnot_kernels.refine_mask``. Compares
each layer's output error on the calibration data with plain Wanda (``refine=False``).
Runs on CPU in seconds.

    python python/examples/torch_ao_sparsifier.py
"""
import copy

import torch
from torch import nn

from dsnot_kernels.integrations.torch_ao import DSnoTSparsifier


def model_and_data(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256), nn.GELU(), nn.Linear(256, 128))
    shift = torch.randn(256)
    calibration = [torch.randn(4, 32, 256) + shift for _ in range(4)]  # 4 batches of 4 samples x 32 tokens
    return model, calibration


def layer_errors(dense, pruned, data):
    """Relative output error of each Linear on its own (dense-model) inputs."""
    errs = {}
    with torch.no_grad():
        for x in data:
            for i, (d, p) in enumerate(zip(dense, pruned)):
                if isinstance(d, nn.Linear):
                    e = ((d(x) - p(x)).norm() / d(x).norm()).item()
                    errs[i] = errs.get(i, 0.0) + e / len(data)
                x = d(x)
    return errs


def sparsify(model, data, **kw):
    sparsifier = DSnoTSparsifier(**kw)
    sparsifier.prepare(model, config=None)          # every nn.Linear; or [{"tensor_fqn": "0.weight", ...}]
    with torch.no_grad():
        for x in data:                              # calibration: forward passes gather the statistics
            model(x)
    sparsifier.step()                               # masks (1 = keep) from refine_mask
    swaps = {fqn: s["swaps"] for fqn, s in sparsifier.state.items()}
    sparsifier.squash_mask()                        # zeros baked into the weights
    return swaps


def main():
    dense, data = model_and_data()
    for label, kw in [("60% unstructured", dict(sparsity_level=0.6)), ("2:4", dict(semi_structured_block_size=4))]:
        wanda, dsnot = copy.deepcopy(dense), copy.deepcopy(dense)
        sparsify(wanda, data, refine=False, **kw)
        swaps = sparsify(dsnot, data, **kw)
        ew, ed = layer_errors(dense, wanda, data), layer_errors(dense, dsnot, data)
        print(f"{label}:")
        for i in ew:
            w = dsnot[i].weight
            print(f"  layer {i}: sparsity {(w == 0).float().mean():.3f}, swaps {swaps[f'{i}.weight']:5d}, "
                  f"output error wanda {ew[i]:.4f} -> dsnot {ed[i]:.4f}")
    print("done")


if __name__ == "__main__":
    main()
