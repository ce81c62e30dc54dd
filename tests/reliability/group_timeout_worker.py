"""One rank of 2 (bare launch): set up the process groups and print each group's timeout as JSON."""

import json
import sys

import torch

from backends.torch.distributed import init_distributed, shutdown
from locmoe.config.schema import ParallelConfig

ctx = init_distributed(ParallelConfig(device="cpu", nodes=2, devices_per_node=1, timeout_s=float(sys.argv[1])))
timeouts = {
    name: None if g.handle is None else g.handle._get_backend(torch.device("cpu")).options._timeout.total_seconds()
    for name, g in [
        ("ep", ctx.ep),
        ("intra", ctx.intra),
        ("inter", ctx.inter),
        ("expert_dp", ctx.expert_dp),
        ("world", ctx.world),
    ]
}
shutdown()
print(json.dumps(timeouts))
