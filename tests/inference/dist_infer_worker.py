"""torchrun worker: the inference model served over N gloo processes in every execution mode; rank 0
writes each mode's largest logit difference from plain execution (over all ranks) as JSON.

    torchrun --nproc_per_node N tests/inference/dist_infer_worker.py CHECKPOINT ROUTER OUT.json
"""

import sys

import torch
import torch.distributed as dist

from backends.torch.inference.loader import load_inference_model
from backends.torch.inference.options import ServeOptions
from tests.inference.synthetic import profile
from tests.inference.worker_report import finish

MODES = {
    "pipelined_auto": ServeOptions(
        mode="pipelined", record=True, profile=profile(grouped_tflops=1e-3, dense_tflops=2e-3, a2a_gbps=0.005)
    ),
    "plain_dense": ServeOptions(mode="plain", kernel="dense"),
    "chunked_3": ServeOptions(mode="chunked", chunks=3),
    "pipelined_3": ServeOptions(mode="pipelined", chunks=3, order="interleaved"),
    "pipelined_4_dispatch_first": ServeOptions(mode="pipelined", chunks=4, order="dispatch_first"),
}


def main():
    ckpt, router, report_path = sys.argv[1:4]
    model = load_inference_model(ckpt, router)
    me = model.group.my_index
    g = torch.Generator().manual_seed(100 + me)
    tokens = torch.randint(0, model.cfg.model.vocab_size, (1 + me % 2, 24), generator=g)  # uneven ranks
    # auto first: before any call a layer plans with uniform routing (later calls use the previous batch's
    # routing, which for LocMoE on these weights keeps every token on its node: then one chunk is best)
    outs = {}
    for name, opts in MODES.items():
        model.options = opts
        outs[name] = model(tokens)
    model.options = ServeOptions(mode="plain")
    ref = model(tokens)
    report = {"world_size": model.group.size}
    for name, out in outs.items():
        err = torch.tensor((out - ref).abs().max().item())
        dist.all_reduce(err, op=dist.ReduceOp.MAX)
        report[name] = float(err)
    report["auto_chunks"] = sorted({c.chunks for c in model.moe_calls()})
    report["auto_kernels"] = sorted({k for c in model.moe_calls() for k in c.kernels})
    report["auto_predicted"] = all(c.predicted_s is not None and c.predicted_s > 0 for c in model.moe_calls())
    finish(report, report_path, me)


if __name__ == "__main__":
    main()
