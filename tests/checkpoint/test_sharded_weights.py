"""Reading a sharded checkpoint's files without torch (``locmoe.checkpoint.sharded_weights``): pieces assembled at their
offsets, experts by id, gaps and missing experts refused; the manifest admits the one ``sharded/`` folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from locmoe.checkpoint.directory import CheckpointError, _check_manifest
from locmoe.checkpoint.sharded_weights import SHARDING_INFO, ShardedTensors, read_experts

W1 = "layers.1.moe.experts.w1"


def _write(folder, rank: int, pieces: dict[str, tuple[np.ndarray, list[int]]]) -> None:
    """One rank's file as DCP's safetensors writer lays it out: offsets in the header metadata."""
    folder.mkdir(exist_ok=True)
    info = {k: {"saved_offsets": off} for k, (_, off) in pieces.items()}
    tensors = {k: np.ascontiguousarray(t) if t.ndim else t for k, (t, _) in pieces.items()}
    file = folder / f"shard-{rank + 1:05d}-model-00001-of-00001.safetensors"
    save_file(tensors, str(file), metadata={"format": "pt", SHARDING_INFO: json.dumps(info)})


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    full = rng.standard_normal((5, 3)).astype(np.float32)  # 5 rows over 2 ranks: torch.chunk gives 3 + 2
    experts = rng.standard_normal((4, 2, 2)).astype(np.float32)
    d = tmp_path / "sharded"
    _write(
        d,
        0,
        {
            "model.embed.weight": (full[:3], [0, 0]),
            f"model.{W1}.2": (experts[2], [0, 0]),
            "exp_avg.embed.weight": (full[:3] * 2, [0, 0]),
            "optimizer.step": (np.array(7.0, np.float32), []),
        },
    )
    _write(
        d,
        1,
        {
            "model.embed.weight": (full[3:], [3, 0]),
            f"model.{W1}.0": (experts[0], [0, 0]),
            f"model.{W1}.1": (experts[1], [0, 0]),
            f"model.{W1}.3": (experts[3], [0, 0]),
            "exp_avg.embed.weight": (full[3:] * 2, [3, 0]),
        },
    )
    return d, full, experts


def test_pieces_and_experts_are_assembled(folder):
    d, full, experts = folder
    model = ShardedTensors(d)
    assert model.keys() == sorted(["embed.weight", W1])
    np.testing.assert_array_equal(model.get_tensor("embed.weight"), full)
    np.testing.assert_array_equal(model.get_tensor(W1), experts)
    np.testing.assert_array_equal(read_experts(model, W1, [3, 1]), experts[[3, 1]])
    moments = ShardedTensors(d, "exp_avg")
    assert moments.keys() == ["embed.weight"]
    np.testing.assert_array_equal(moments.get_tensor("embed.weight"), full * 2)
    assert float(model.piece("optimizer.step")) == 7.0


def test_a_missing_piece_or_expert_is_refused(folder, tmp_path):
    d, full, experts = folder
    (d / "shard-00002-model-00001-of-00001.safetensors").unlink()
    model = ShardedTensors(d, shapes={"embed.weight": (5, 3), W1: (4, 2, 2)})
    with pytest.raises(CheckpointError, match="do not cover"):
        model.get_tensor("embed.weight")  # rows 3-4 were on the lost rank
    with pytest.raises(CheckpointError, match=r"no expert \[0, 1\]"):
        read_experts(model, W1, [0, 1, 2])
    with pytest.raises(CheckpointError, match="holds no tensor files"):
        ShardedTensors(tmp_path / "empty")


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("sharded/shard-00001-model-00001-of-00001.safetensors", True),
        ("other/x", False),
        ("sharded/../x", False),
        ("sharded/sharded/x", False),
        ("sharded/", False),
    ],
)
def test_the_manifest_admits_only_the_sharded_folder(tmp_path, name, allowed):
    manifest = {"format_version": 3, "step": 1, "files": {name: {"bytes": 1, "sha256": "0"}}}
    if allowed:
        _check_manifest(manifest, tmp_path)
    else:
        with pytest.raises(CheckpointError, match="not allowed"):
            _check_manifest(manifest, tmp_path)
