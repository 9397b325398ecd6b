"""What MODEL_PATH names: a file, an hf:// URI read offline from a hub cache the tests build, or the tiny EDEN (a
stand-in of the tests' own); the settings keep the string as given; every failure is one line."""

from __future__ import annotations

import io
import logging

import pytest
import torch

from edensplit.errors import CheckpointError, ConfigError
from edensplit.model import hub
from edensplit.model.checkpoint import file_digest, load_model
from edensplit.model.loading import TRYING_OUT, for_trying_out, load_model_for
from edensplit.model.sources import LOCAL_NAME, TINY, TINY_NAME, resolve
from edensplit.settings import ModelSettings
from tests.conftest import TINY_CONFIG
from tests.hub import COMMIT, cache_file

REPO = "someone/eden-test"
URI = f"hf://{REPO}/eden.pt"


@pytest.fixture(scope="module")
def weights() -> tuple[bytes, torch.nn.Module]:
    """A TINY_CONFIG checkpoint's bytes, as the released {"eden": state_dict} file, and the model they hold."""
    model = load_model(None, TINY_CONFIG, allow_random=True, seed=7)
    buffer = io.BytesIO()
    torch.save({"eden": model.state_dict()}, buffer)
    return buffer.getvalue(), model


def test_a_hub_uri_loads_offline_from_the_cache_named_by_repository_commit_and_digest(hub_cache, weights):
    data, reference = weights
    snapshot = cache_file(hub_cache, REPO, "eden.pt", data)
    model = load_model(URI, TINY_CONFIG)
    assert torch.equal(model.proj_out.weight, reference.proj_out.weight)
    assert (model.weights_name, model.weights_repository, model.weights_revision) == (URI, REPO, COMMIT)
    assert model.weights_digest == file_digest(snapshot) == load_model(snapshot, TINY_CONFIG).weights_digest
    assert str(hub_cache) not in model.weights_source and COMMIT in model.weights_source


def test_a_revision_by_commit_tag_or_pull_request_and_a_file_in_a_folder(hub_cache, weights):
    data, _ = weights
    other = "f" * 40
    cache_file(hub_cache, REPO, "eden.pt", data)
    cache_file(hub_cache, REPO, "ckpt/eden.pt", data, commit=other, refs=("v1", "refs/pr/3"))
    for uri, commit in ((f"hf://{REPO}@{COMMIT}/eden.pt", COMMIT), (f"hf://{REPO}@v1/ckpt/eden.pt", other),
                        (f"hf://{REPO}@refs/pr/3/ckpt/eden.pt", other), (f"hf://models/{REPO}/eden.pt", COMMIT)):
        weights_ = resolve(uri)
        assert (weights_.repository, weights_.revision, weights_.name) == (REPO, commit, hub.parse(uri).uri)
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        resolve(f"hf://{REPO}@v1/eden.pt")  # v1 names a commit without that file


def test_not_cached_and_offline_is_one_line_that_says_how_to_fetch_it(hub_cache):
    with pytest.raises(CheckpointError) as err:
        load_model(URI, TINY_CONFIG)
    message = err.value.message
    assert "\n" not in message and REPO in message and f"`edensplit download {URI}`" in message
    assert "HF_HUB_OFFLINE=1" in message and str(hub_cache) in message


@pytest.mark.parametrize("uri,phrase", [
    ("hf://onlyname", "does not name a file in a Hub repository"),
    (f"hf://{REPO}", "does not name a file in a Hub repository"),
    (f"hf://{REPO}@/eden.pt", "nothing after '@'"),
    ("hf://datasets/someone/data/eden.pt", "not datasets"),
    (f"hf://{REPO}/../eden.pt", "may not hold '.' or '..'"),
    ("hf://some one/eden/eden.pt", "is not a Hub repository name"),
    ("hf://a--b/eden/eden.pt", "is not a Hub repository name"),
    ("hf://someone/eden./eden.pt", "is not a Hub repository name"),
    ("hf://someone/eden.git/eden.pt", "is not a Hub repository name"),
])
def test_a_malformed_uri_is_one_line(hub_cache, uri, phrase):
    with pytest.raises(ConfigError, match=phrase) as err:
        resolve(uri)
    assert "\n" not in err.value.message and err.value.message.startswith(uri)


def test_model_path_stays_the_string_given(monkeypatch, tmp_path):
    """A Path would make hf:// into hf:/; a file path still works, relative, absolute or from ~."""
    for value in (URI, TINY, "checkpoints/eden.pt", str(tmp_path / "eden.pt")):
        monkeypatch.setenv("MODEL_PATH", value)
        assert ModelSettings().model_path == value
    monkeypatch.setenv("MODEL_PATH", "")
    assert ModelSettings().model_path is None
    assert ModelSettings(model_path=tmp_path / "eden.pt").model_path == str(tmp_path / "eden.pt")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve("~/eden.pt").file == tmp_path / "eden.pt" and resolve("~/eden.pt").name == LOCAL_NAME
    monkeypatch.chdir(tmp_path)
    torch.save({"eden": load_model(None, TINY_CONFIG, allow_random=True).state_dict()}, tmp_path / "rel.pt")
    assert load_model("rel.pt", TINY_CONFIG).weights_name == LOCAL_NAME


# -- the tiny EDEN -------------------------------------------------------------------------------

def test_tiny_carries_its_config_and_is_named_with_its_digest(tiny_dir, caplog):
    with caplog.at_level(logging.INFO, logger="edensplit.server"):
        model = load_model_for({"encode", "interpolate"}, ModelSettings(model_path=TINY, device="cpu"))
    assert model.config == TINY_CONFIG  # from eden_tiny.yaml, not the released config
    assert model.weights_name == TINY_NAME and model.weights_repository is None
    assert model.weights_digest == file_digest(tiny_dir / "eden_tiny.safetensors")
    line = caplog.records[-1].getMessage()
    assert TINY_NAME in line and model.weights_digest in line and str(tiny_dir) not in line


def test_tiny_refuses_a_conflicting_eden_config_and_takes_an_equal_one(tiny_dir, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("model_args:\n  hidden_dim: 48\n  num_heads: 2\n")
    with pytest.raises(ConfigError, match="carries its own config .* unset EDEN_CONFIG"):
        load_model_for({"encode"}, ModelSettings(model_path=TINY, eden_config=other))
    same = load_model_for({"encode"}, ModelSettings(model_path=TINY, eden_config=tiny_dir / "eden_tiny.yaml"))
    assert same.config == TINY_CONFIG


def test_tiny_not_installed_is_one_line(no_tiny):
    with pytest.raises(CheckpointError, match="the tiny EDEN is not installed in this copy") as err:
        load_model(TINY)
    assert "\n" not in err.value.message and "MODEL_PATH" in err.value.message


def test_trying_out_takes_model_path_then_random_weights_then_tiny(tiny_dir, tmp_path):
    said: list[str] = []
    given = ModelSettings(model_path=URI)
    assert for_trying_out(given, said.append) is given
    random = ModelSettings(eden_random_weights=True, eden_config=tmp_path / "x.yaml")
    assert for_trying_out(random, said.append) is random
    assert said == []
    assert for_trying_out(ModelSettings(), said.append).model_path == TINY
    assert said == [TRYING_OUT] and TINY_NAME in TRYING_OUT and hub.RELEASED in TRYING_OUT


def test_a_server_without_model_path_refuses_and_names_tiny_for_a_try_out(tiny_dir):
    with pytest.raises(CheckpointError, match=f"no checkpoint given: set MODEL_PATH.*MODEL_PATH={TINY} to try"):
        load_model_for({"encode"}, ModelSettings())
    assert load_model(None, TINY_CONFIG, allow_random=True).weights_name == "random (seed 0)"
