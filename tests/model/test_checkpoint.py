"""Checkpoint and config loading: the released layout loads strictly; every failure names its cause."""

from __future__ import annotations

import pickle
import re

import pytest
import torch

from edensplit.errors import CheckpointError, ConfigError
from edensplit.model.checkpoint import expected_shapes, load_model, read_state_dict
from edensplit.model.config import EdenConfig, load_config
from edensplit.model.eden import ENCODE, INTERPOLATE
from tests.conftest import TINY_CONFIG, fixture_checkpoint


def released_shapes(fixtures_dir) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in (fixtures_dir / "full_state_dict_shapes.txt").read_text().splitlines():
        if line.strip():
            name, shape = line.split("\t")
            shapes[name] = tuple(int(d) for d in re.findall(r"\d+", shape))
    return shapes


def test_full_size_model_has_the_released_names_and_shapes(fixtures_dir):
    full = load_model(None, EdenConfig(), allow_random=True)
    ours = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    assert ours == released_shapes(fixtures_dir)
    assert 157e6 < sum(p.numel() for p in full.parameters()) < 159e6


def test_state_dict_built_from_the_shapes_file_loads_strictly(fixtures_dir, tmp_path):
    shapes = released_shapes(fixtures_dir)
    state = {name: torch.full(shape, 0.01) for name, shape in shapes.items()}
    path = tmp_path / "eden.pt"
    torch.save({"eden": state}, path)
    del state
    config = load_config(fixtures_dir / "eval_eden.yaml")
    model = load_model(path, config)
    assert model.weights_source == str(path)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert torch.all(model.proj_in.weight == 0.01)


def test_upstream_eval_config_loads_with_released_values(fixtures_dir):
    config = load_config(fixtures_dir / "eval_eden.yaml")
    assert config == EdenConfig()  # the released values are the defaults
    assert config.model_args.hidden_dim == 768 and config.vae_scaler == pytest.approx(0.179437)


def test_stage_models_hold_only_their_weights(fixtures_dir):
    path = fixture_checkpoint(fixtures_dir, "tiny_96x128")
    config = EdenConfig.from_dict({"model_args": {"hidden_dim": 96, "num_heads": 6, "dit_depth": 2,
                                                  "decoder_depth": 2, "qkv_bias": True}})
    cloud = load_model(path, config, stages={ENCODE})
    edge = load_model(path, config, stages={INTERPOLATE})
    assert set(cloud.state_dict()) == {f"{b}_cond_{k}.{p}" for b in ("patch", "norm")
                                       for k in ("dit", "dec") for p in ("weight", "bias")}
    assert not set(cloud.state_dict()) & set(edge.state_dict())
    assert set(cloud.state_dict()) | set(edge.state_dict()) == set(expected_shapes(config))


def test_random_stage_weights_equal_the_full_models():
    full = load_model(None, TINY_CONFIG, allow_random=True, seed=5)
    edge = load_model(None, TINY_CONFIG, stages={INTERPOLATE}, allow_random=True, seed=5)
    for name, tensor in edge.state_dict().items():
        assert torch.equal(tensor, full.state_dict()[name]), name
    assert full.weights_source == "random (seed 5)"


def test_safetensors_and_bare_state_dict_load(tmp_path):
    from safetensors.torch import save_file

    model = load_model(None, TINY_CONFIG, allow_random=True)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    for name in ("w.safetensors", "bare.pth"):
        loaded = load_model(tmp_path / name, TINY_CONFIG)
        assert torch.equal(loaded.proj_out.weight, model.proj_out.weight)


# -- what a user sees when it goes wrong ---------------------------------------------------------

def test_no_checkpoint_without_explicit_random_weights_is_refused():
    with pytest.raises(CheckpointError, match="no checkpoint given: set MODEL_PATH"):
        load_model(None, TINY_CONFIG)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*nope\.pt"):
        load_model(tmp_path / "nope.pt", TINY_CONFIG)


def test_wrong_keys_are_named(tmp_path):
    state = load_model(None, TINY_CONFIG, allow_random=True).state_dict()
    state["extra.weight"] = state.pop("proj_in.weight")
    torch.save({"eden": state}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "bad.pt", TINY_CONFIG)
    assert "1 missing keys: proj_in.weight" in str(err.value)
    assert "1 unexpected keys: extra.weight" in str(err.value)


def test_wrong_shapes_are_named(tmp_path, fixtures_dir):
    with pytest.raises(CheckpointError) as err:
        load_model(fixture_checkpoint(fixtures_dir, "tiny_70x100"), EdenConfig())  # a D=64 file, the full-size config
    message = str(err.value)
    assert "does not match the config" in message
    assert "proj_in.weight: checkpoint (64, 16), config expects (768, 16)" in message
    assert "missing keys: dit_blocks.2." in message  # the tiny file has 2 of the 12 blocks


class NotAWeight:
    pass


def test_a_pickle_that_is_not_a_checkpoint_is_not_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"eden": NotAWeight()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint that can be loaded safely"):
        load_model(path, TINY_CONFIG)


def test_a_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_state_dict(path)
    (tmp_path / "x.safetensors").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_state_dict(tmp_path / "x.safetensors")


def test_a_checkpoint_of_something_else(tmp_path):
    torch.save({"model": [1, 2, 3]}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="holds no EDEN state dict"):
        read_state_dict(tmp_path / "other.pt")


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_args:\n  hidden_dim: 100\n  num_heads: 12\n")
    with pytest.raises(ConfigError, match=r"hidden_dim \(100\) must be divisible by num_heads \(12\)"):
        load_config(bad)
    bad.write_text("model_args:\n  hiden_dim: 768\n")
    with pytest.raises(ConfigError, match="unknown model_args keys: hiden_dim"):
        load_config(bad)
    bad.write_text("vae_scaler: -1\n")
    with pytest.raises(ConfigError, match="vae_scaler must be > 0"):
        load_config(bad)
    bad.write_text("model_args: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
