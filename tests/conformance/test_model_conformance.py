"""The whole PanGu-Sigma-style model across backends: the same seed gives the same weights, and a checkpoint
written by one backend (``model.safetensors``, ``locmoe.model_spec`` names) loaded in the other gives the same
logits and auxiliary objective.

Tolerance: logits 2e-5 absolute, aux 1e-6. Both run fp32 on CPU; their attention, matmul and softmax
kernels sum in different orders (measured max |Δlogit| ~1e-6 on these sizes).
"""

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from locmoe.config import load_config

VARIANTS = {
    "locmoe-grap-factor": [],
    "gshard-dense-bound-untied": ["moe.router.kind=gshard", "moe.capacity.mode=bound", "model.tie_embeddings=false"],
    "hash-domains-gelu": ["moe.router.kind=hash", "moe.domains.num_domains=2", "moe.activation=gelu"],
    # issue 14: the paper's gate (learned ε), batch locality loss and Theorem-1 bound; the loss-free bias (state)
    "locmoe-paper": [
        "moe.router.top_k=1",
        "moe.router.gate_activation=relu",
        "moe.router.gate_bias=true",
        "moe.router.rho=1.0",
        "moe.router.balance_counts=gate",
        "moe.router.locality_loss=batch",
        "moe.capacity.mode=bound",
        "moe.capacity.bound_rule=paper",
    ],
    "aux-free-node-limited": [
        "moe.router.kind=gshard",
        "moe.router.scoring=sigmoid",
        "moe.router.node_limit=1",
        "moe.router.bias_update_rate=0.001",
        "moe.router.z_loss_coef=0.001",
    ],
}
LOGIT_TOL, AUX_TOL = 2e-5, 1e-6


def job(name: str):
    return load_config(
        overrides=[
            "model.d_model=64",
            "model.n_layers=3",
            "model.n_heads=4",
            "model.d_ff=96",
            "model.max_seq_len=16",
            "data.seq_len=16",
            "moe.d_expert=48",
            "parallel.nodes=2",
            "parallel.devices_per_node=2",
            *VARIANTS[name],
        ]
    )


def batch(cfg):
    rng = np.random.default_rng(3)
    return rng.integers(0, cfg.model.vocab_size, (8, 16)), rng.integers(0, cfg.moe.domains.num_domains, 8)


class Torch:
    def __init__(self, cfg, seed: int):
        import torch

        from backends.torch.distributed import init_distributed
        from backends.torch.train import build_model

        self.torch, self.cfg = torch, cfg
        self.ctx = init_distributed(cfg.parallel)
        self.model = build_model(cfg, self.ctx)
        if seed != 0:
            self.model.reset_parameters(seed)

    def state(self) -> dict:
        from backends.torch.checkpoint import consolidated_state

        return {k: v.numpy() for k, v in consolidated_state(self.model, self.ctx).items()}

    def load(self, path: Path) -> None:
        from backends.torch.checkpoint import load_model_weights

        load_model_weights(self.model, path)

    def logits(self, tokens, domain):
        t = self.torch
        self.model.eval()
        with t.no_grad():
            logits, aux, _ = self.model(t.from_numpy(tokens), t.from_numpy(domain))
        return logits.numpy(), float(aux)


class MindSpore:
    def __init__(self, cfg, seed: int):
        from backends.mindspore.distributed import init_distributed
        from backends.mindspore.train import build_model

        self.cfg = cfg
        self.ctx = init_distributed(cfg.parallel)
        self.model = build_model(cfg, self.ctx)
        if seed != 0:
            self.model.reset_parameters(seed)

    def state(self) -> dict:
        from backends.mindspore.checkpoint import consolidated_state

        return consolidated_state(self.model, self.ctx)

    def load(self, path: Path) -> None:
        from backends.mindspore.checkpoint import load_model_weights

        load_model_weights(self.model, path)

    def logits(self, tokens, domain):
        from mindspore import Tensor

        self.model.set_train(False)
        logits, aux, _ = self.model(Tensor(tokens), Tensor(domain))
        return logits.asnumpy(), float(aux.asnumpy())


FRAMEWORKS = {"torch": Torch, "mindspore": MindSpore}


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_seed_gives_the_same_weights(variant):
    cfg = job(variant)
    a, b = Torch(cfg, 0).state(), MindSpore(cfg, 0).state()
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("direction", [("torch", "mindspore"), ("mindspore", "torch")])
def test_a_checkpoint_gives_the_same_logits_in_the_other_backend(tmp_path, variant, direction):
    """Weights from a seed neither default uses, saved by the writer's own checkpoint code, loaded by the
    reader's; the writer's forward pass is the reference."""
    cfg = job(variant)
    writer, reader = FRAMEWORKS[direction[0]](cfg, seed=11), FRAMEWORKS[direction[1]](cfg, seed=0)
    state = writer.state()
    rng = np.random.default_rng(5)
    for name in state:  # ε and the selection bias start at 0: make them matter
        if name.endswith(("router.gate_bias", "router.selection_bias")):
            state[name] = (rng.standard_normal(state[name].shape) * 0.3).astype(np.float32)
    save_file(state, str(tmp_path / "model.safetensors"))
    writer.load(tmp_path)
    reader.load(tmp_path)
    tokens, domain = batch(cfg)
    want, aux_want = writer.logits(tokens, domain)
    got, aux_got = reader.logits(tokens, domain)
    assert np.abs(got - want).max() <= LOGIT_TOL
    assert abs(aux_got - aux_want) <= AUX_TOL
