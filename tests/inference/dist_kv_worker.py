"""torchrun worker: KV-cache decoding over an EP group of N gloo processes (the MoE layers' collective
path) against the no-cache forward; rank 0 writes the largest logit difference over all ranks as JSON.

    torchrun --nproc_per_node N tests/inference/dist_kv_worker.py CHECKPOINT ROUTER OUT.json
"""

import sys

import torch
import torch.distributed as dist

from backends.torch.inference.decode import generate
from backends.torch.inference.kv_decoder import KVDecoder
from backends.torch.inference.kv_generate import generate_cached
from backends.torch.inference.loader import load_inference_model
from tests.inference.worker_report import finish

STEPS = 4


def main():
    ckpt, router, report_path = sys.argv[1:4]
    model = load_inference_model(ckpt, router)
    me = model.group.my_index
    g = torch.Generator().manual_seed(10 + me)
    lengths = [3 + 4 * me, 6][: 1 + me % 2]  # ranks hold different batches
    seqs = [torch.randint(0, 256, (n + STEPS,), generator=g) for n in lengths]
    P = max(lengths)
    dec = KVDecoder(model, len(lengths), P + STEPS)
    padded = torch.stack([torch.cat([torch.zeros(P - n, dtype=torch.long), s[:n]]) for s, n in zip(seqs, lengths)])
    logits = dec.prefill(padded, lengths)
    err = 0.0
    for t in range(STEPS + 1):
        # the reference forward is collective too: every rank runs it once per row slot, padding with a copy
        for b in range(2):
            s, n = (seqs[b], lengths[b]) if b < len(lengths) else (seqs[0], lengths[0])
            ref = model(s[: n + t][None], last_only=True)[0]
            if b < len(lengths):
                err = max(err, (logits[b] - ref).abs().max().item())
        if t < STEPS:
            tok = torch.stack([s[n + t] for s, n in zip(seqs, lengths)])
            logits = dec.step(tok, torch.tensor([P + t]))
    e = torch.tensor(err)
    dist.all_reduce(e, op=dist.ReduceOp.MAX)
    prompts = [[65, 66, 67], [10] * 7, [3, 4], [99]]
    cached, _ = generate_cached(model, prompts, 5, batch_size=1)
    report = {"world_size": model.group.size, "max_err": float(e), "same_tokens": cached == generate(model, prompts, 5)}
    finish(report, report_path, me)


if __name__ == "__main__":
    main()
