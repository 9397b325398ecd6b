"""Training a tiny EDEN on synthetic motion: both of EDEN's stages, then the inference checkpoint.

Stage 1, the tokenizer: an encoder (training only, `tokenizer.py`) compresses the middle frame It into latents,
the inference network's decoder rebuilds It from them and from I0's and I1's tokens; L1 + a structural stand-in
for LPIPS + a small KL, with a PatchGAN critic joining for the last part (`losses.py`).
Then `vae_shift` and `vae_scaler` are refitted: the mean and 1 / standard deviation of the tokenizer's latents.
Stage 2, the diffusion transformer: the decoder frozen, the DiT (and its own conditioning branch) learns the
velocity x1 - x0 on the linear path x_t = t x1 + (1 - t) x0 from noise x0 to normalised latents x1.
Stage 3 (this project's, not the paper's; `sampled_steps` 0 skips it): the whole inference network fine-tuned
through the reference sampler, noise -> 2 Euler steps -> decoder -> frame, on the frame's squared error.
The inference checkpoint is the one network holding the DiT and the decoder (and both conditioning branches):
the tokenizer's encoder and the critic are dropped.

Everything is seeded and runs with a fixed thread count and deterministic algorithms, so the same command on the
same machine makes the same weights.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from edensplit.model.config import EdenConfig, ModelArgs
from edensplit.model.eden import Eden
from edensplit.model.sampler import REFERENCE_GRID, REFERENCE_SAMPLER
from edensplit.model.stages import STD_EPS, frame_difference, normalise_difference
from edensplit.training import synthetic
from edensplit.training.losses import adaptive_weight, hinge_d_loss, structural
from edensplit.training.tokenizer import Discriminator, Posterior, TokenizerArgs, TokenizerEncoder

WEIGHTS_NAME, CONFIG_NAME, REPORT_NAME = "eden_tiny.safetensors", "eden_tiny.yaml", "eden_tiny.report.json"
TINY_ARGS = ModelArgs(patch_size=4, latent_dim=16, hidden_dim=64, num_heads=4, mlp_ratio=4.0, dit_depth=4,
                      decoder_depth=2, qkv_bias=True)
# The parameters each stage trains (prefixes of the inference network's names); the rest stay frozen.
DECODER_SIDE = ("patch_cond_dec", "norm_cond_dec", "proj_token", "decoder_blocks", "unpatchify")
DIT_SIDE = ("proj_in", "patch_cond_dit", "norm_cond_dit", "dit_blocks", "norm_out", "proj_out", "adaLN_modulation",
            "difference_embedder", "denoise_timestep_embedder")
DATA_SEED, FIT_SEED = 1, 2  # training's synthetic streams (held-out ones are >= synthetic.HELD_OUT_SEED)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the shipped weights."""

    seed: int = 0
    threads: int = 1  # one: with two, a busy machine makes OpenMP threads wait on each other (8x slower)
    size: int = 64  # training frames are size x size
    dataset: int = 8192  # pre-rendered training triplets, reused with flips, transposes and time reversal
    model: ModelArgs = TINY_ARGS
    tokenizer: TokenizerArgs = TokenizerArgs()
    # stage 1 (at patch 4, 3e-3 reached a 0.4 dB higher ceiling than 2e-3 in 1800 steps: docs/quality.md)
    vae_steps: int = 1600
    vae_batch: int = 32
    vae_lr: float = 3e-3
    # The structural term at full weight slowed reconstruction (600 steps: 22.6 dB held-out vs 23.3 dB without
    # it); a tenth keeps its push against blur without holding PSNR back.
    perceptual_weight: float = 0.1
    kl_weight: float = 1e-6  # per pixel and channel, as upstream's KL weight with its resolution scaling
    disc_start: float = 0.9  # the critic joins for the last tenth of stage 1 (its steps cost twice as much)
    disc_weight: float = 0.5
    disc_lr: float = 2e-4
    fit_count: int = 1024  # triplets the latent statistics are measured on
    # stage 2 (fewer steps than stage 3 can make up for: 45 minutes in all)
    dit_steps: int = 1000
    dit_batch: int = 32
    dit_lr: float = 2e-3
    dit_grid_share: float = 0.0  # of the times t trained at, the share at the reference sampler's (0 and 0.75)
    # stage 3 (0 steps: none): the whole network through the reference sampler, on the frames' squared error
    sampled_steps: int = 1800
    sampled_batch: int = 16
    sampled_lr: float = 5e-4
    # all stages
    warmup: int = 100
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    log_every: int = 100
    # released constants kept: they only standardise the difference input
    cos_sim_mean: float = EdenConfig.cos_sim_mean
    cos_sim_std: float = EdenConfig.cos_sim_std

    def eden_config(self, vae_shift: float, vae_scaler: float) -> EdenConfig:
        return EdenConfig(model_args=self.model, cos_sim_mean=self.cos_sim_mean, cos_sim_std=self.cos_sim_std,
                          vae_shift=vae_shift, vae_scaler=vae_scaler)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class Batch:
    """Frames float [B, 3, H, W] in [0, 1] and their per-frame normalisation, as the inference stages make it."""

    frame0: Tensor
    middle: Tensor
    frame1: Tensor
    mean: Tensor = field(init=False)  # [B, 1, 1, 1]: the pair's, as the decoder's output is de-normalised
    std: Tensor = field(init=False)

    def __post_init__(self) -> None:
        stats = [(f.mean(dim=(1, 2, 3)), f.flatten(1).std(dim=1) + STD_EPS) for f in (self.frame0, self.frame1)]
        self._stats = stats
        self.mean = ((stats[0][0] + stats[1][0]) / 2).view(-1, 1, 1, 1)
        self.std = ((stats[0][1] + stats[1][1]) / 2).view(-1, 1, 1, 1)

    def normalised_pair(self) -> Tensor:
        """[2B, 3, H, W]: I0s then I1s, each normalised by its own mean and std (the encode stage's rule)."""
        return torch.cat([(f - m.view(-1, 1, 1, 1)) / s.view(-1, 1, 1, 1)
                          for f, (m, s) in zip((self.frame0, self.frame1), self._stats, strict=True)])

    def normalised_middle(self) -> Tensor:
        return (self.middle - self.mean) / self.std


def render_dataset(count: int, size: int, seed: int = DATA_SEED) -> Tensor:
    """uint8 [count, 3 (I0, It, I1), 3, H, W] training triplets."""
    frames = synthetic.frames_batch(seed, 0, count, size, size)  # [count, 3, H, W, 3]
    return torch.from_numpy(frames).permute(0, 1, 4, 2, 3).contiguous()


def batches(data: Tensor, batch: int, generator: torch.Generator) -> Iterator[Batch]:
    """Endless random batches with random flips, transposes and time reversal (each keeps It the true middle)."""
    while True:
        idx = torch.randint(len(data), (batch,), generator=generator)
        x = data[idx].float() / 255  # [B, 3, 3, H, W]
        flips = torch.randint(2, (4,), generator=generator).tolist()
        if flips[0]:
            x = x.flip(-1)
        if flips[1]:
            x = x.flip(-2)
        if flips[2] and x.shape[-1] == x.shape[-2]:
            x = x.transpose(-1, -2)
        if flips[3]:
            x = x.flip(1)
        yield Batch(x[:, 0], x[:, 1], x[:, 2])


# ---------------------------------------------------------------------------------------------
# The network's passes during training


def init_weights(model: nn.Module) -> None:
    """EDEN's initialisation: Xavier-uniform linear and patch weights, zero biases; the DiT's conditioning
    embedders N(0, 0.02); the adaLN modulation and the DiT's output projection zero (each DiT block starts as
    the identity but for its temporal attention)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            nn.init.zeros_(m.bias)
    if isinstance(model, Eden):
        nn.init.normal_(model.difference_embedder.weight, std=0.02)
        nn.init.normal_(model.denoise_timestep_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(model.denoise_timestep_embedder.mlp[2].weight, std=0.02)
        for m in (model.adaLN_modulation[-1], model.proj_out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)


def conditioning(eden: Eden, batch: Batch) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[int, int]]:
    """(cond_dit of I0, of I1), (cond_dec of I0, of I1), and the token grid: the encode stage."""
    pair = batch.normalised_pair()
    p = eden.args.patch_size
    grid = (pair.shape[-2] // p, pair.shape[-1] // p)
    cond_dit, cond_dec = eden.encode_tokens(pair)
    return cond_dit.chunk(2), cond_dec.chunk(2), grid


def contexts(eden: Eden, dit: tuple[Tensor, Tensor], dec: tuple[Tensor, Tensor], grid: tuple[int, int]
             ) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]]]:
    """The temporal attention's keys and values of I0 and I1, per DiT block and per decoder block."""
    (dit0, dec0), (dit1, dec1) = eden.frame_context(dit[0], dec[0], grid), eden.frame_context(dit[1], dec[1], grid)
    return list(zip(dit0, dit1, strict=True)), list(zip(dec0, dec1, strict=True))


def reconstruct(eden: Eden, encoder: TokenizerEncoder, batch: Batch, mean: bool = False) -> tuple[Tensor, Posterior]:
    """The tokenizer: It -> posterior -> a sample (`mean`: its mean, drawing no noise) -> the decoder -> It again,
    in [0, 1] (not clamped)."""
    dit, dec, grid = conditioning(eden, batch)
    posterior = encoder(eden, batch.normalised_middle(), *dec)
    _, dec_ctx = contexts(eden, dit, dec, grid)
    z = posterior.mean if mean else posterior.sample()
    return eden.decode(z, dec_ctx, grid) * batch.std + batch.mean, posterior


# ---------------------------------------------------------------------------------------------
# Optimisation


def trainable(module: nn.Module, prefixes: tuple[str, ...]) -> list[nn.Parameter]:
    """Unfreeze the parameters whose names start with one of `prefixes`, freeze the others; return the former."""
    chosen = []
    for name, param in module.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
        if param.requires_grad:
            chosen.append(param)
    return chosen


def optimiser(params: list[nn.Parameter], lr: float, steps: int, cfg: TrainConfig
              ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with a linear warm-up and a cosine decay to zero, as upstream's stages."""
    opt = torch.optim.AdamW(params, lr=lr, betas=cfg.betas, eps=1e-6, weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, steps - cfg.warmup)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def step(opt: torch.optim.Optimizer, sched: Any, loss: Tensor, params: list[nn.Parameter], clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    if sched is not None:
        sched.step()


class Log:
    """Running means of named values, printed every `every` steps with the rate."""

    def __init__(self, name: str, every: int, total: int):
        self.name, self.every, self.total = name, every, total
        self.sums: dict[str, float] = {}
        self.count, self.start = 0, time.perf_counter()
        self.history: list[dict[str, float]] = []  # the printed means: the loss curve

    def add(self, step_index: int, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        if (step_index + 1) % self.every == 0 or step_index + 1 == self.total:
            rate = self.count / (time.perf_counter() - self.start)
            self.history.append({"step": step_index + 1, **{k: round(v / self.count, 5) for k, v in self.sums.items()}})
            means = " ".join(f"{k} {v / self.count:.4f}" for k, v in self.sums.items())
            print(f"[{self.name} {step_index + 1}/{self.total}] {means} ({rate:.2f} steps/s)", flush=True)
            self.sums, self.count, self.start = {}, 0, time.perf_counter()


# ---------------------------------------------------------------------------------------------
# The two stages


def train_tokenizer(eden: Eden, encoder: TokenizerEncoder, data: Tensor, cfg: TrainConfig) -> list[dict[str, float]]:
    """Stage 1: the decoder side of EDEN and the tokenizer's encoder, on reconstructing It; returns the curve."""
    params = trainable(eden, DECODER_SIDE) + list(encoder.parameters())
    opt, sched = optimiser(params, cfg.vae_lr, cfg.vae_steps, cfg)
    critic = Discriminator(cfg.tokenizer)
    d_opt = torch.optim.AdamW(critic.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9), weight_decay=cfg.weight_decay)
    disc_from = int(cfg.disc_start * cfg.vae_steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    log = Log("tokenizer", cfg.log_every, cfg.vae_steps)
    pixels = 3 * cfg.size * cfg.size
    for i, batch in zip(range(cfg.vae_steps), batches(data, cfg.vae_batch, gen), strict=False):
        recon, posterior = reconstruct(eden, encoder, batch)
        rec = (recon - batch.middle).abs().mean()
        nll = rec + cfg.perceptual_weight * structural(recon, batch.middle)
        kl = posterior.kl().mean() / pixels
        loss = nll + cfg.kl_weight * kl
        values = {"l1": rec.item(), "nll": nll.item(), "kl": kl.item()}
        if i >= disc_from:  # the critic's step, then the generator's loss against the updated critic
            d_loss = hinge_d_loss(critic(batch.middle * 2 - 1), critic(recon.detach() * 2 - 1))
            step(d_opt, None, d_loss, list(critic.parameters()), cfg.grad_clip)
            g_loss = -critic(recon * 2 - 1).mean()
            weight = adaptive_weight(nll, g_loss, eden.unpatchify[-1].weight, cfg.disc_weight)
            loss = loss + weight * g_loss
            values |= {"g": g_loss.item(), "d": d_loss.item(), "w": weight.item()}
        step(opt, sched, loss, params, cfg.grad_clip)
        log.add(i, **values)
    return log.history


@torch.no_grad()
def fit_latent_stats(eden: Eden, encoder: TokenizerEncoder, cfg: TrainConfig) -> tuple[float, float]:
    """vae_shift and vae_scaler for this tokenizer: the mean of its latent samples and 1 / their std."""
    data = render_dataset(cfg.fit_count, cfg.size, FIT_SEED)
    samples = []
    for start in range(0, len(data), 64):
        x = data[start: start + 64].float() / 255
        batch = Batch(x[:, 0], x[:, 1], x[:, 2])
        _, dec, _ = conditioning(eden, batch)
        samples.append(encoder(eden, batch.normalised_middle(), *dec).sample())
    z = torch.cat(samples).double()
    return float(z.mean()), float(1 / z.std())


@torch.no_grad()
def tokenizer_ceiling(eden: Eden, encoder: TokenizerEncoder, cfg: TrainConfig, count: int = 64) -> dict[str, float]:
    """The decoder on the posterior means of held-out triplets, against the blend on the same ones: the PSNR the
    transformer could reach with perfect latents (held-out data only: no training random stream is drawn)."""
    from edensplit.training.evaluate import blend
    from edensplit.training.metrics import psnr

    data = render_dataset(count, cfg.size, synthetic.HELD_OUT_SEED)  # uint8 [N, 3 (I0, It, I1), 3, H, W]
    x = data.float() / 255
    recon, _ = reconstruct(eden, encoder, Batch(x[:, 0], x[:, 1], x[:, 2]), mean=True)
    out = (recon.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    frames = data.permute(0, 1, 3, 4, 2).numpy()  # [N, 3, H, W, 3], as the metrics take them
    ours = [psnr(o, f[1]) for o, f in zip(out, frames, strict=True)]
    blends = [psnr(b, f[1]) for b, f in zip(blend(frames[:, 0], frames[:, 2]), frames, strict=True)]
    return {"count": count, "psnr": float(np.mean(ours)), "blend_psnr": float(np.mean(blends))}


def difference_embedding(eden: Eden, batch: Batch, cfg: TrainConfig) -> Tensor:
    """The pair's difference scalar, computed and normalised as the inference stages do, embedded [B, D]."""
    raw = frame_difference(batch.frame0, batch.frame1).clone()  # out of inference mode
    return eden.condition(normalise_difference(raw, cfg.cos_sim_mean, cfg.cos_sim_std))


def training_times(n: int, grid_share: float) -> Tensor:
    """Times t for a batch of the velocity objective: uniform on [0, 1), but a `grid_share` of them (drawn at
    random) at the times the reference sampler evaluates the velocity, 0 and 0.75 (`REFERENCE_GRID`): the
    objective is the same, its samples concentrated where the 2-step sampler every default run uses looks."""
    uniform = torch.rand(n)
    if not grid_share:
        return uniform  # (no further draws: a run without it makes the weights it made before it existed)
    on_grid = torch.rand(n) < grid_share
    grid = torch.tensor(REFERENCE_GRID[:-1])[torch.randint(len(REFERENCE_GRID) - 1, (n,))]
    return torch.where(on_grid, grid, uniform)


def train_dit(eden: Eden, encoder: TokenizerEncoder, data: Tensor, cfg: TrainConfig, shift: float,
              scaler: float) -> list[dict[str, float]]:
    """Stage 2: the DiT and its conditioning branch learn the velocity from noise to the normalised latents; returns
    the curve."""
    params = trainable(eden, DIT_SIDE)
    encoder.requires_grad_(False)
    opt, sched = optimiser(params, cfg.dit_lr, cfg.dit_steps, cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    log = Log("dit", cfg.log_every, cfg.dit_steps)
    for i, batch in zip(range(cfg.dit_steps), batches(data, cfg.dit_batch, gen), strict=False):
        dit, dec, grid = conditioning(eden, batch)
        with torch.no_grad():
            x1 = (encoder(eden, batch.normalised_middle(), *dec).sample() - shift) * scaler
        diff_emb = difference_embedding(eden, batch, cfg)
        dit_ctx, _ = contexts(eden, dit, dec, grid)
        t = training_times(len(x1), cfg.dit_grid_share)
        x0 = torch.randn_like(x1)
        xt = t.view(-1, 1, 1) * x1 + (1 - t.view(-1, 1, 1)) * x0
        loss = F.mse_loss(eden.velocity(xt, t, diff_emb, dit_ctx, grid), x1 - x0)
        step(opt, sched, loss, params, cfg.grad_clip)
        log.add(i, loss=loss.item())
    return log.history


def sampled_velocity(eden: Eden, diff_emb: Tensor, ctx: list[tuple[Tensor, Tensor]], grid: tuple[int, int],
                     x: Tensor, t: float) -> Tensor:
    """The transformer's velocity at one time t for the whole batch: what the sampler calls."""
    return eden.velocity(x, torch.full((len(x),), t), diff_emb, ctx, grid)


def train_sampled(eden: Eden, data: Tensor, cfg: TrainConfig, shift: float, scaler: float) -> list[dict[str, float]]:
    """Stage 3 (not in the paper): every parameter of the inference network, through what inference runs: noise,
    the reference sampler's 2 Euler steps, the decoder, the de-normalised frame, against the true middle frame
    (squared error: PSNR's). The velocity objective trains each step on its own, and at this size the two steps
    from noise miss the latents the decoder needs by more than its own error (1.2 to 1.8 dB); this trains them
    for the sampler they run in. Returns the curve."""
    params = trainable(eden, DIT_SIDE + DECODER_SIDE)
    opt, sched = optimiser(params, cfg.sampled_lr, cfg.sampled_steps, cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    log = Log("sampled", cfg.log_every, cfg.sampled_steps)
    for i, batch in zip(range(cfg.sampled_steps), batches(data, cfg.sampled_batch, gen), strict=False):
        dit, dec, grid = conditioning(eden, batch)
        dit_ctx, dec_ctx = contexts(eden, dit, dec, grid)
        diff_emb = difference_embedding(eden, batch, cfg)
        noise = torch.randn(len(batch.middle), (grid[0] // 2) * (grid[1] // 2), cfg.model.latent_dim, generator=gen)
        x = REFERENCE_SAMPLER.run(functools.partial(sampled_velocity, eden, diff_emb, dit_ctx, grid), noise)
        frame = eden.decode(x / scaler + shift, dec_ctx, grid) * batch.std + batch.mean
        loss = F.mse_loss(frame, batch.middle)
        step(opt, sched, loss, params, cfg.grad_clip)
        log.add(i, mse=loss.item())
    return log.history


# ---------------------------------------------------------------------------------------------
# The inference checkpoint


def save(eden: Eden, config: EdenConfig, out: Path, extra: dict[str, Any]) -> Path:
    """The inference network's state dict as safetensors, its config beside it (the layout `load_model` reads)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in eden.state_dict().items()}
    weights = out / WEIGHTS_NAME
    save_file(state, str(weights))
    raw = {"model_args": config.model_args.as_dict(), **{k: v for k, v in config.as_dict().items()
                                                          if k != "model_args"}, **extra}
    (out / CONFIG_NAME).write_text(yaml.safe_dump(raw, sort_keys=False))
    return weights


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train(cfg: TrainConfig, out: Path) -> dict[str, Any]:
    """Both stages, the refit constants and the checkpoint in `out`; returns the timings, the loss curves and the
    constants. The thread count and
    deterministic mode it sets are put back after it."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(cfg, out)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(cfg: TrainConfig, out: Path) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    timings: dict[str, Any] = {}
    wall0, cpu0 = time.perf_counter(), cpu_seconds()

    def lap(name: str) -> None:
        timings[name] = {"wall_s": round(time.perf_counter() - wall0, 1), "cpu_s": round(cpu_seconds() - cpu0, 1)}
        print(f"-- {name}: {timings[name]['wall_s']} s wall, {timings[name]['cpu_s']} s CPU (cumulative)", flush=True)

    data = render_dataset(cfg.dataset, cfg.size)
    lap("data")
    config = cfg.eden_config(vae_shift=0.0, vae_scaler=1.0)
    eden = Eden(config)
    init_weights(eden)
    encoder = TokenizerEncoder(cfg.model, cfg.tokenizer.encoder_depth)
    init_weights(encoder)
    curves = {"tokenizer": train_tokenizer(eden, encoder, data, cfg)}
    lap("tokenizer")
    ceiling = tokenizer_ceiling(eden, encoder, cfg)
    print(f"-- tokenizer ceiling on {ceiling['count']} held-out triplets: {ceiling['psnr']:.2f} dB "
          f"(blend {ceiling['blend_psnr']:.2f} dB)", flush=True)
    shift, scaler = fit_latent_stats(eden, encoder, cfg)
    print(f"-- latents: vae_shift {shift:.6f}, vae_scaler {scaler:.6f}", flush=True)
    curves["dit"] = train_dit(eden, encoder, data, cfg, shift, scaler)
    lap("dit")
    if cfg.sampled_steps:
        curves["sampled"] = train_sampled(eden, data, cfg, shift, scaler)
        lap("sampled")
    config = cfg.eden_config(vae_shift=shift, vae_scaler=scaler)
    eden.config = config
    eden.eval().requires_grad_(False)
    save(eden, config, out, {"training": {"command": "python -m edensplit.training", "config": cfg.as_dict()}})
    lap("saved")
    return {"timings": timings, "curves": curves, "tokenizer_ceiling": ceiling, "vae_shift": shift,
            "vae_scaler": scaler}
