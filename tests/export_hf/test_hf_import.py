"""``locmoe convert --from hf``: back to our checkpoint with byte-identical weights; a directory written by
transformers itself (no locmoe.json) computes the same; a corrupt or pickled directory is a clear error,
exit 2, nothing written, no code run."""

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from backends.torch.inference.loader import load_inference_model
from locmoe.checkpoint.directory import latest, load_state
from locmoe.cli import main
from locmoe.config import config_from_dict
from locmoe.export.hf_export import export_hf
from locmoe.export.hf_import import import_hf
from locmoe.model_spec import parameter_shapes
from tests.export_hf.checkpoints import write_checkpoint


def tensors(run):
    return load_file(str(latest(run) / "model.safetensors"))


def assert_same_bytes(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes(), k


def test_round_trip_returns_byte_identical_weights(trained, hf_dir, tmp_path, capsys):
    assert main(["convert", "--from", "hf", str(hf_dir), str(tmp_path / "back")]) == 0
    assert_same_bytes(tensors(trained), tensors(tmp_path / "back"))
    state, orig = load_state(latest(tmp_path / "back")), load_state(latest(trained))
    assert state["step"] == orig["step"] and state["config"]["model"] == orig["config"]["model"]
    assert state["config"]["moe"] == orig["config"]["moe"]
    assert (tmp_path / "back" / "router" / "manifest.json").is_file()  # ready for locmoe generate


def test_round_trip_of_grap_over_a_temperature_and_a_folded_learned_gate(tmp_path):
    run = tmp_path / "grap"
    write_checkpoint(run, "moe.router.kind=locmoe", "moe.router.temperature=3.0")
    import_hf(export_hf(run, tmp_path / "hf_grap"), tmp_path / "grap_back")
    assert_same_bytes(tensors(run), tensors(tmp_path / "grap_back"))  # GrAP recognised: no tensor
    run = tmp_path / "dense"
    write_checkpoint(run, "moe.router.kind=gshard", "moe.router.temperature=0.3")
    import_hf(export_hf(run, tmp_path / "hf_dense"), tmp_path / "dense_back")
    back = tensors(tmp_path / "dense_back")
    cfg = config_from_dict(load_state(latest(tmp_path / "dense_back"))["config"])
    assert cfg.moe.router.temperature == 1.0 and set(back) == set(parameter_shapes(cfg))
    for k, v in tensors(run).items():  # the same function
        want = v / np.float32(0.3) if k.endswith("gate_weight") else v
        assert np.allclose(back[k], want, rtol=1e-6, equal_nan=True), k


def test_a_directory_transformers_saved_computes_the_same(trained, hf_dir, tmp_path):
    """No locmoe.json: the config comes from config.json alone (a learned gate holding GrAP's matrix)."""
    saved = tmp_path / "saved"
    transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).save_pretrained(saved)
    import_hf(saved, tmp_path / "back")
    tokens = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(3))
    a = load_inference_model(trained, trained / "router")(tokens)
    b = load_inference_model(tmp_path / "back", tmp_path / "back" / "router")(tokens)
    assert (a - b).abs().max().item() <= 1e-5  # GrAP as a mean vs as a matmul: ~1e-7


def corrupt(hf_dir, tmp_path, how):
    d = tmp_path / "bad"
    shutil.copytree(hf_dir, d)
    weights = d / "model.safetensors"
    if how == "no_config":
        (d / "config.json").unlink()
    elif how == "config_not_json":
        (d / "config.json").write_text("{not json")
    elif how == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "missing_tensor":
        t = load_file(str(weights))
        del t["model.layers.1.mlp.experts.3.up_proj.weight"]
        from safetensors.numpy import save_file

        save_file(t, str(weights), metadata={"format": "pt"})
    elif how == "nonzero_bias":
        t = load_file(str(weights))
        t["model.layers.2.self_attn.k_proj.bias"] = np.ones_like(t["model.layers.2.self_attn.k_proj.bias"])
        from safetensors.numpy import save_file

        save_file(t, str(weights), metadata={"format": "pt"})
    elif how == "other_architecture":
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(dict(cfg, model_type="mixtral")))
    return d


@pytest.mark.parametrize(
    "how, message",
    [
        ("no_config", "config.json is missing"),
        ("config_not_json", "config.json is not valid JSON"),
        ("truncated_weights", "the file is truncated or corrupt"),
        ("missing_tensor", "tensor 'model.layers.1.mlp.experts.3.up_proj.weight' is missing"),
        ("nonzero_bias", "model.layers.2.self_attn.k_proj.bias is not zero"),
        ("other_architecture", "model_type 'mixtral'"),
    ],
)
def test_corrupt_directory_is_a_clear_error(hf_dir, tmp_path, capsys, how, message):
    bad = corrupt(hf_dir, tmp_path, how)
    assert main(["convert", "--from", "hf", str(bad), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_weights_are_never_loaded(hf_dir, tmp_path, capsys):
    d = tmp_path / "pickled"
    shutil.copytree(hf_dir, d)
    (d / "model.safetensors").unlink()
    marker = tmp_path / "code_ran"
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(_RunsCode(str(marker))))
    assert main(["convert", "--from", "hf", str(d), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pytorch_model.bin" in err and "pickle" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
