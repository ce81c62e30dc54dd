"""The end of a torchrun test worker: rank 0 writes the report as JSON, every rank waits and leaves the group."""

import json

import torch.distributed as dist


def finish(report: dict, path: str, me: int) -> None:
    if me == 0:
        with open(path, "w") as f:
            json.dump(report, f)
    dist.barrier()
    dist.destroy_process_group()
