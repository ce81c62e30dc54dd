"""``locmoe export --format hf``: transformers loads the directory as Qwen2-MoE and computes our logits.

Tolerance 1e-4 (fp32 CPU): the same weights; the kernels differ in summation order (GrAP as a matmul
instead of a group mean, rotate_half on permuted rows, transformers' per-expert loop) — measured ~6e-7."""

import json

import pytest
import torch
import transformers

from backends.torch.inference.kv_generate import generate_cached
from backends.torch.inference.loader import load_inference_model
from locmoe.checkpoint.directory import load_state, tokenizer_spec
from locmoe.cli import main
from locmoe.data import ByteTokenizer, load_tokenizer
from locmoe.export import export_checkpoint
from locmoe.export.hf_export import export_hf
from locmoe.export.hf_import import import_hf
from tests.export_hf.checkpoints import write_checkpoint

TOL = 1e-4


def hf_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def max_logit_diff(run, hf_path, length=48) -> float:
    ours = load_inference_model(run, run / "router")
    tokens = torch.randint(0, 256, (2, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (hf_model(hf_path)(tokens).logits - ours(tokens)).abs().max().item()


def test_transformers_computes_our_logits_on_a_trained_checkpoint(trained, hf_dir):
    cfg = json.loads((hf_dir / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2MoeForCausalLM"] and cfg["mlp_only_layers"] == [0]
    assert type(hf_model(hf_dir)).__name__ == "Qwen2MoeForCausalLM"
    assert max_logit_diff(trained, hf_dir) <= TOL
    # and transformers' own greedy generate continues as our KV-cache decoder does
    prompt = list(b"def main(")
    ours, _ = generate_cached(load_inference_model(trained, trained / "router"), [prompt], 8)
    theirs = hf_model(hf_dir).generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
    assert theirs[0, len(prompt) :].tolist() == ours[0]


@pytest.mark.parametrize(
    "overrides",
    [
        ("moe.router.kind=gshard", "moe.router.temperature=0.7", "model.tie_embeddings=false"),
        ("moe.router.kind=switch",),  # k = 1: the raw probability
        (
            "moe.router.kind=locmoe",
            "moe.router.temperature=2.0",
            "model.n_layers=6",
            "model.dense_layers=2",
            "model.moe_every=2",
        ),  # GrAP over a temperature; MoE at 2, 4
    ],
    ids=["gshard_untied_temperature", "switch_top1", "grap_dense_pattern"],
)
def test_every_representable_router_matches(overrides, tmp_path):
    run = tmp_path / "run"
    write_checkpoint(run, *overrides)
    export_checkpoint(run, run / "router")
    assert max_logit_diff(run, export_hf(run, tmp_path / "hf")) <= TOL


def test_byte_tokenizer_encodes_and_decodes_as_ours(hf_dir):
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours = ByteTokenizer()
    text = "héllo wörld\n\tdef f(x):  return x  # 😀 ∑"
    assert tok(text)["input_ids"] == ours.encode(text).tolist()
    assert tok.decode(ours.encode(text).tolist()) == text
    for bad in ([0xC3], [0xE2, 0x82, 0x41], [0xFE, 0x41, 0xC3, 0xA9]):  # invalid UTF-8 decodes the same
        assert tok.decode(bad) == ours.decode(bad)
    # 0xFF (in no UTF-8 text) is the end-of-text token; typed in a prompt, the token's name stays its bytes
    assert tok.decode([0x41, 0xFF]) == "A<|endoftext|>" and tok.decode([0x41, 0xFF], skip_special_tokens=True) == "A"
    assert tok("a <|endoftext|>")["input_ids"] == list(b"a <|endoftext|>")


def test_auto_tokenizer_pads_a_batch_of_prompts_with_the_vocabulary_unchanged(hf_dir):
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id, len(tok)) == ("<|endoftext|>", 255, 255, 256)
    batch = tok(["def main(", "import numpy as np"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0].tolist() == [255] * 9 + list(b"def main(")  # left padding, masked out
    assert batch["attention_mask"][0].tolist() == [0] * 9 + [1] * 9
    generation = json.loads((hf_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == generation["pad_token_id"] == 255


def test_tokenizers_json_of_the_run_travels_along(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.train_from_iterator(
        ["the quick brown fox jumps over the lazy dog"] * 50,
        trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "</s>"]),
    )
    t.save(str(tmp_path / "tok.json"))
    run = tmp_path / "run"
    write_checkpoint(run, f"data.tokenizer={tmp_path / 'tok.json'}", "model.vocab_size=64")
    out = export_hf(run, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok("the lazy fox")["input_ids"] == t.encode("the lazy fox").ids
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == t.token_to_id("</s>")
    ckpt = import_hf(out, tmp_path / "back")  # and back: the checkpoint keeps its own copy
    spec = tokenizer_spec(load_state(ckpt)["config"]["data"]["tokenizer"], ckpt)
    assert load_tokenizer(spec).encode("the lazy fox").tolist() == t.encode("the lazy fox").ids


@pytest.mark.parametrize(
    "overrides, field",
    [
        (("moe.router.kind=hash",), "moe.router.kind = 'hash'"),
        (("moe.router.kind=expert_choice",), "moe.router.kind = 'expert_choice'"),
        (("moe.domains.num_domains=2",), "moe.domains.num_domains = 2"),
        (("moe.activation=gelu",), "moe.activation = 'gelu'"),
    ],
    ids=["hash", "expert_choice", "domains", "gelu"],
)
def test_unrepresentable_configs_are_clear_errors(overrides, field, tmp_path, capsys):
    run = tmp_path / "run"
    write_checkpoint(run, *overrides)
    assert main(["export", "--format", "hf", str(run), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err
    assert not (tmp_path / "hf").exists()


def test_exports_before_the_end_token_still_read_as_the_byte_tokenizer():
    from locmoe.export.hf_tokenizer import byte_tokenizer_json, is_byte_tokenizer

    assert is_byte_tokenizer(json.loads(byte_tokenizer_json())) and is_byte_tokenizer(
        json.loads(byte_tokenizer_json(end_of_text=False))
    )
