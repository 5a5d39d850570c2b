"""One rank of tests/test_moe.py::test_torchrun_two_ranks_equal_one_process:
``python tests/moe_dist_worker.py OUTDIR`` with RANK, WORLD_SIZE, MASTER_PORT set (127.0.0.1 only).
Writes OUTDIR/<case>-<rank>.pt = (masks, state_dict) of each case of ``test_moe.MOE_DIST_CASES``."""
import datetime
import os
import sys

import torch
import torch.distributed as dist


def main():
    out, rank = sys.argv[1], int(os.environ["RANK"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}", rank=rank,
                            world_size=int(os.environ["WORLD_SIZE"]), timeout=datetime.timedelta(seconds=120))
    import test_moe
    for n, (family, kw) in enumerate(test_moe.MOE_DIST_CASES):
        torch.save(test_moe.dist_case(family, kw), os.path.join(out, f"{n}-{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
