"""Serving with the torch backend: an inference model loaded from a checkpoint and its exported routers,
expert-parallel over N processes, with the EPS-style expert pipeline (kernel choice by load, chunked
all-to-all overlapped with expert compute).

    server                                               the backend's locmoe.backend_api.Server (the CLI's door)
    load_inference_model(checkpoint, router_dir, ...)   → InferenceModel
    generate_cached(model, prompts, ...)                 batched KV-cache decoding (kv_generate.py)
    generate(model, prompts, ...)                        the no-cache reference decoding (decode.py)
    ServeOptions                                         plain / chunked / pipelined, kernel, profile
"""

from backends.torch.inference.options import ServeOptions

__all__ = ["ServeOptions"]
