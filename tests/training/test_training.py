"""The training command end to end on a few steps: its checkpoint loads through MODEL_PATH=tiny and interpolates
frames of the right shape; the synthetic data it trains on is a function of its seed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml

from edensplit.model.checkpoint import load_model
from edensplit.model.config import EdenConfig, ModelArgs
from edensplit.model.sources import TINY_DIR_ENV
from edensplit.training import synthetic
from edensplit.training.train import CONFIG_NAME, WEIGHTS_NAME, TrainConfig, train
from edensplit.video.images import read_png, write_png
from tests.conftest import run_cli_here

# A few steps of each stage on a network and frames small enough to train in seconds.
FEW_STEPS = TrainConfig(size=32, dataset=16, vae_steps=3, dit_steps=3, sampled_steps=3, vae_batch=2, dit_batch=2,
                        sampled_batch=2, fit_count=8, warmup=1, log_every=1,
                        model=ModelArgs(patch_size=8, latent_dim=4, hidden_dim=32, num_heads=2, dit_depth=1,
                                        decoder_depth=1, qkv_bias=True))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    return out, train(FEW_STEPS, out)


def test_the_generator_is_a_function_of_seed_and_index():
    a, b = synthetic.triplet(5, 3, 32, 48, extras=True), synthetic.triplet(5, 3, 32, 48, extras=True)
    assert a.frames.shape == (3, 32, 48, 3) and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.centroids, b.centroids)
    assert np.array_equal(a.masks, b.masks) and np.array_equal(a.without, b.without)
    assert not np.array_equal(a.frames, synthetic.triplet(6, 3, 32, 48).frames)  # another stream
    assert not np.array_equal(a.frames, synthetic.triplet(5, 4, 32, 48).frames)  # another index
    # the batch path renders the same triplets as the one-at-a-time path
    assert np.array_equal(synthetic.frames_batch(5, 3, 2, 32, 48)[0], a.frames)


def test_objects_move_and_the_middle_frame_is_the_middle():
    moved = []
    for t in synthetic.triplets(7, 8, 64, 64):
        tracked = t.centroids[t.tracked]
        moved.extend(np.linalg.norm(tracked[:, 2] - tracked[:, 0], axis=1))
        assert not np.array_equal(t.frames[0], t.frames[2])
    assert np.mean(moved) > 2.0  # pixels: the data has motion to learn


def test_the_checkpoint_loads_as_model_path_tiny_with_refitted_constants(trained, monkeypatch):
    out, report = trained
    assert {"data", "tokenizer", "dit", "sampled", "saved"} <= set(report["timings"])
    assert [p["step"] for p in report["curves"]["dit"]] == [1, 2, 3] and report["curves"]["tokenizer"][0]["l1"] > 0
    assert [p["step"] for p in report["curves"]["sampled"]] == [1, 2, 3] and report["curves"]["sampled"][0]["mse"] > 0
    monkeypatch.setenv(TINY_DIR_ENV, str(out))
    model = load_model("tiny")
    raw = yaml.safe_load((out / CONFIG_NAME).read_text())
    assert model.config == EdenConfig.from_dict(raw)
    assert model.config.model_args == FEW_STEPS.model
    # vae_shift and vae_scaler were measured on this tokenizer's latents, not carried from the released config
    assert model.config.vae_shift != EdenConfig.vae_shift and model.config.vae_scaler != EdenConfig.vae_scaler
    assert raw["training"]["config"] == dataclasses.asdict(FEW_STEPS) | {"betas": list(FEW_STEPS.betas)}
    assert (out / WEIGHTS_NAME).stat().st_size < 1_000_000


def test_the_cli_interpolates_with_the_trained_checkpoint(trained, tmp_path):
    out, _ = trained
    t = synthetic.triplet(synthetic.HELD_OUT_SEED, 0, 40, 56)
    a, b = write_png(tmp_path / "a.png", t.frames[0]), write_png(tmp_path / "b.png", t.frames[2])
    result = run_cli_here(["interpolate", "--frame_0_path", str(a), "--frame_1_path", str(b), "--local",
                           "--output_dir", str(tmp_path / "out"), "--seed", "1"],
                          {"MODEL_PATH": "tiny", TINY_DIR_ENV: str(out)})
    assert result.returncode == 0, result.stderr
    middle = read_png(tmp_path / "out" / "interpolated.png")
    assert middle.shape == (40, 56, 3) and middle.dtype == np.uint8


def test_the_report_summary_shows_the_curves_and_the_timings(trained):
    from edensplit.training.report import report_markdown

    _, trained_report = trained
    report = {"weights_bytes": 1, "weights_sha256_16": "x", "torch": "t", "results": {}, **trained_report}
    text = report_markdown(report)
    assert "| tokenizer |" in text and "dit loss curve" in text and "| 3 |" in text
    ceiling = trained_report["tokenizer_ceiling"]  # the decoder on posterior means, beside the blend
    assert ceiling["count"] == 64 and 0 < ceiling["psnr"] < 99 and 10 < ceiling["blend_psnr"] < 60
    assert f"{ceiling['psnr']:.2f} dB PSNR, the blend {ceiling['blend_psnr']:.2f} dB" in text


def test_the_same_seed_makes_the_same_weights_and_another_does_not(trained, tmp_path):
    import torch

    out, _ = trained
    threads = torch.get_num_threads()
    train(FEW_STEPS, tmp_path / "again")
    assert torch.get_num_threads() == threads  # put back
    assert (tmp_path / "again" / WEIGHTS_NAME).read_bytes() == (out / WEIGHTS_NAME).read_bytes()
    train(dataclasses.replace(FEW_STEPS, seed=1), tmp_path / "other")
    assert (tmp_path / "other" / WEIGHTS_NAME).read_bytes() != (out / WEIGHTS_NAME).read_bytes()


def test_the_transformer_trains_at_the_reference_samplers_times_as_often_as_asked():
    """A share of the velocity objective's times are the 2-step sampler's own (0 and 0.75), the rest uniform; at
    share 0 the draws are torch.rand's alone, as before the option existed (the old weights stay reproducible)."""
    import torch

    from edensplit.training.train import training_times

    torch.manual_seed(0)
    t = training_times(20000, 0.5)
    on_grid = (t == 0.0) | (t == 0.75)
    assert 0.47 < on_grid.float().mean() < 0.53
    assert 0.45 < (t[on_grid] == 0.0).float().mean() < 0.55  # both times alike
    assert ((t >= 0) & (t < 1)).all() and t[~on_grid].std() > 0.25  # the rest spread over [0, 1)
    torch.manual_seed(0)
    plain = torch.rand(7)
    torch.manual_seed(0)
    assert torch.equal(training_times(7, 0.0), plain)


def test_the_third_stage_trains_every_weight_through_the_sampler_and_lowers_the_frames_error():
    """Stage 3 fine-tunes the whole inference network (both stages' parameter groups cover it) on what inference
    makes: noise, the reference sampler's two steps, the decoder; on four triplets its frames' error falls."""
    import torch

    from edensplit.model.eden import Eden
    from edensplit.training.train import DECODER_SIDE, DIT_SIDE, init_weights, render_dataset, train_sampled

    cfg = dataclasses.replace(FEW_STEPS, sampled_steps=40, sampled_batch=4, sampled_lr=3e-3, log_every=10)
    eden = Eden(cfg.eden_config(0.0, 1.0))
    names = [name for name, _ in eden.named_parameters()]
    assert all(name.startswith(DIT_SIDE + DECODER_SIDE) for name in names)
    torch.manual_seed(0)
    init_weights(eden)
    before = {name: p.detach().clone() for name, p in eden.named_parameters()}
    curve = train_sampled(eden, render_dataset(4, cfg.size), cfg, shift=0.0, scaler=1.0)
    assert [p["step"] for p in curve] == [10, 20, 30, 40]
    assert curve[-1]["mse"] < 0.7 * curve[0]["mse"]
    moved = {name for name, p in eden.named_parameters() if not torch.equal(p, before[name])}
    assert {"proj_out.weight", "dit_blocks.0.self_attn.qkv.weight", "unpatchify.3.weight"} <= moved


def test_without_the_third_stage_nothing_of_it_runs(tmp_path):
    """sampled_steps 0: the run is the two stages alone (an older recipe's weights are made as before)."""
    out = train(dataclasses.replace(FEW_STEPS, sampled_steps=0, vae_steps=1, dit_steps=1), tmp_path)
    assert "sampled" not in out["curves"] and "sampled" not in out["timings"]
