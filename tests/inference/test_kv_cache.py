"""KV-cache decoding computes what the full re-computation computes (the no-cache ``InferenceModel``
forward), for every router that routes per token, on a batch of prompts of different lengths.

Tolerance 1e-5 (fp32 CPU): the same weights and kernels; only the attention's key length (padding masked
out) and the order of the expert rows differ (measured ~1e-7)."""

import pytest
import torch

from backends.torch.inference import kv_decoder
from backends.torch.inference.decode import Sampling, generate
from backends.torch.inference.kv_decoder import KVDecoder
from backends.torch.inference.kv_generate import CachedGenerator, generate_cached, sample_tokens
from backends.torch.inference.moe_step import gathered_experts
from locmoe.inference.errors import InferenceError
from tests.inference.kv_models import served_model

LENGTHS = [5, 11, 2]
STEPS = 5


def left_pad(seqs, lengths):
    P = max(lengths)
    return torch.stack([torch.cat([torch.zeros(P - n, dtype=torch.long), s[:n]]) for s, n in zip(seqs, lengths)])


def max_kv_error(model, domain=None) -> float:
    """Prefill the prompts, then feed the given continuations one step at a time (teacher forcing); the
    largest logit difference from running each row's prefix alone through the no-cache model."""
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 256, (n + STEPS,), generator=g) for n in LENGTHS]
    P = max(LENGTHS)
    dec = KVDecoder(model, len(LENGTHS), P + STEPS)

    def ref(b, n):
        dom = None if domain is None else domain[b : b + 1]
        return model(seqs[b][:n][None], dom, last_only=True)[0]

    logits = dec.prefill(left_pad(seqs, LENGTHS), LENGTHS, domain)
    err = max((logits[b] - ref(b, n)).abs().max().item() for b, n in enumerate(LENGTHS))
    for t in range(STEPS):
        tok = torch.stack([s[n + t] for s, n in zip(seqs, LENGTHS)])
        logits = dec.step(tok, torch.tensor([P + t]), domain)
        err = max(err, max((logits[b] - ref(b, n + t + 1)).abs().max().item() for b, n in enumerate(LENGTHS)))
    return err


@pytest.mark.parametrize("router", ["locmoe", "gshard", "switch", "hash"])
def test_kv_cache_logits_equal_full_recomputation(router):
    assert max_kv_error(served_model(router)) <= 1e-5


def test_kv_cache_through_the_reference_moe_layer(monkeypatch):
    """Routers with options the sync-free path does not compute run InferenceMoE inside the KV decoder."""
    real = KVDecoder.__init__

    def reference_moe(self, *args):
        real(self, *args)
        self.fast_moe = {i: False for i in self.fast_moe}

    monkeypatch.setattr(KVDecoder, "__init__", reference_moe)
    assert max_kv_error(served_model("locmoe")) <= 1e-5


def test_kv_cache_with_random_routed_expert_domains():
    model = served_model("locmoe", "moe.domains.num_domains=2", "moe.router.gate=dense")
    assert max_kv_error(model, domain=torch.tensor([0, 1, 1])) <= 1e-5


def test_padding_never_reaches_the_moe_layers(monkeypatch):
    rows = []
    real = kv_decoder.moe_step

    def counting(router, experts, x, *args):
        rows.append(x.shape[0])
        return real(router, experts, x, *args)

    monkeypatch.setattr(kv_decoder, "moe_step", counting)
    model = served_model("gshard")
    dec = KVDecoder(model, 3, 16)
    seqs = [torch.arange(n) for n in LENGTHS]
    dec.prefill(left_pad(seqs, LENGTHS), LENGTHS)
    assert rows == [sum(LENGTHS)] * len(model.moe_layers)  # 18 real tokens, not 3 x 11 slots


def test_routers_that_are_not_causal_are_refused():
    with pytest.raises(InferenceError, match="expert_choice.*routes each token against the other tokens"):
        KVDecoder(served_model("expert_choice", "moe.capacity.mode=factor"), 1, 8)
    with pytest.raises(InferenceError, match="capacity 'factor'.*--capacity dropless"):
        KVDecoder(served_model("gshard", "moe.capacity.mode=factor"), 1, 8)


def test_gathered_experts_equal_the_grouped_gemm():
    """The fallback for dtypes grouped_mm lacks: same rows, another GEMM (tolerance 1e-5, measured ~1e-7)."""
    experts = served_model("gshard").layers[1].moe.experts
    g = torch.Generator().manual_seed(0)
    expert = torch.sort(torch.randint(0, 4, (9,), generator=g)).values
    x = torch.randn(9, 32, generator=g)
    counts = torch.bincount(expert, minlength=4)
    with torch.no_grad():
        assert (gathered_experts(experts, x, expert) - experts(x, counts)).abs().max().item() <= 1e-5


def test_cached_generation_equals_the_no_cache_reference():
    model = served_model("locmoe")
    prompts = [[100, 101, 102], [40] * 9, [7]]
    new, stats = generate_cached(model, prompts, 6, batch_size=2)  # two rounds: 2 + 1 prompts
    assert new == generate(model, prompts, 6)
    assert stats.new_tokens == 18 and stats.first_token_s > 0 and stats.tokens_per_s > 0
    near = [[65] * (model.context - 2)]  # fills the context after 2
    assert generate_cached(model, near, 10)[0] == generate(model, near, 10) and len(generate(model, near, 10)[0]) == 2


def test_sampling_is_seeded_and_stops_at_eos():
    model = served_model("gshard")
    prompts = [[1, 2, 3], [4, 5]]
    s = Sampling(greedy=False, top_p=0.9, temperature=1.5, seed=7)
    a, _ = generate_cached(model, prompts, 8, s)
    assert a == generate_cached(model, prompts, 8, s)[0]
    assert a != generate_cached(model, prompts, 8, Sampling(greedy=False, top_p=0.9, temperature=1.5, seed=8))[0]
    eos = a[0][2]
    gen = CachedGenerator(model, 2, 16)
    out, timing = gen.run(prompts, 8, s, eos_id=eos, eos_check_every=1)
    assert out[0] == a[0][: a[0].index(eos) + 1]  # cut at EOS (kept), the other row goes on
    assert out[1] == (a[1][: a[1].index(eos) + 1] if eos in a[1] else a[1])
    logits = torch.tensor([[0.0, 5.0, 4.9, -10.0]])
    picks = {
        int(sample_tokens(logits, Sampling(greedy=False, top_p=0.6), torch.Generator().manual_seed(i)))
        for i in range(40)
    }
    assert picks == {1, 2}  # the nucleus: the two top tokens only


def test_prompt_longer_than_the_context_is_a_clear_error():
    model = served_model("gshard")
    with pytest.raises(InferenceError, match="prompt 1 has 41 tokens, longer than the model's context of 40"):
        generate_cached(model, [[1], [2] * 41], 4)
    with pytest.raises(InferenceError, match="exceed the cache of 8 slots"):
        CachedGenerator(model, 1, 8).run([[1] * 6], 5)
