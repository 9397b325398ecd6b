"""The EDEN network, top to bottom: conditioning encoder, DiT velocity model, token decoder.

Parameter names and shapes are those of the released checkpoint, so `load_state_dict(strict=True)`
takes the real file. The module keeps no per-request state: everything a request needs is passed
in and returned, so one instance can serve several threads at once. A module may hold only the
weights of one stage (`stages={"encode"}` for the cloud, `{"interpolate"}` for the edge).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edensplit.model.config import EdenConfig, ModelArgs

ENCODE = "encode"
INTERPOLATE = "interpolate"
ALL_STAGES = frozenset({ENCODE, INTERPOLATE})
LN_EPS = 1e-6
TIMESTEP_FEATURES = 256


# ---------------------------------------------------------------------------------------------
# Fixed embeddings


@functools.lru_cache(maxsize=32)
def _pos_embed_cpu(ph: int, pw: int, dim: int, scale: int) -> Tensor:
    """2-D sin-cos embedding of a (ph/scale)x(pw/scale) grid, row-major; x and y use the ph, pw divisors."""

    def sincos(p: Tensor, d: int) -> Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        angles = p.double()[:, None] * omega[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    rows, cols = ph // scale, pw // scale
    x = torch.arange(cols, dtype=torch.float32) / (pw / 28)
    y = torch.arange(rows, dtype=torch.float32) / (ph / 16)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    emb = torch.cat([sincos(xx.flatten(), dim // 2), sincos(yy.flatten(), dim // 2)], dim=1)
    return emb.float()


@functools.lru_cache(maxsize=64)
def pos_embed(ph: int, pw: int, dim: int, scale: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The position embedding for a grid, computed once per (grid, device, dtype) and cached."""
    return _pos_embed_cpu(ph, pw, dim, scale).to(device=device, dtype=dtype)


def timestep_features(t: Tensor) -> Tensor:
    """[B] times -> [B, 256] features: 128 frequencies, all cosines then all sines (t not rescaled)."""
    half = TIMESTEP_FEATURES // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


# ---------------------------------------------------------------------------------------------
# Blocks


class Attention(nn.Module):
    """Multi-head attention with one fused qkv projection; used both globally and per neighbourhood."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=qkv_bias)

    def forward(self, x: Tensor) -> Tensor:
        """Ordinary self-attention over all tokens of x [B, T, D]."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))

    def context_kv(self, tokens: Tensor) -> Tensor:
        """Keys and values of context tokens [B, T, S, D] -> [B, T, S, 2, heads, head_dim].

        Only the k and v rows of qkv are applied: the context tokens' queries are never used.
        """
        D = tokens.shape[-1]
        bias = None if self.qkv.bias is None else self.qkv.bias[D:]
        kv = F.linear(tokens, self.qkv.weight[D:], bias)
        return kv.unflatten(-1, (2, self.num_heads, D // self.num_heads))

    def neighbourhood(self, x: Tensor, ctx0: Tensor, ctx1: Tensor) -> Tensor:
        """Temporal attention: each token of x attends within [its frame-0 context, itself, frame-1 context].

        x [B, T, D]; ctx0, ctx1 [B, T, S, 2, heads, head_dim] from `context_kv`. Only the query
        token's output is kept, so only its query is computed.
        """
        B, T, D = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).view(B, T, 3, h, D // h).unbind(2)
        kv = torch.cat([ctx0, torch.stack([k, v], dim=2).unsqueeze(2), ctx1], dim=2)  # [B,T,2S+1,2,h,hd]
        keys, values = kv.flatten(0, 1).permute(2, 0, 3, 1, 4)  # each [B*T, h, 2S+1, hd]
        y = F.scaled_dot_product_attention(q.reshape(B * T, 1, h, -1).transpose(1, 2), keys, values)
        return self.proj(y.reshape(B, T, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=LN_EPS)


class Block(nn.Module):
    """Self-attention, temporal attention, MLP: the parameters shared by DiT and decoder blocks."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        D = args.hidden_dim
        self.norm_self_attn = layer_norm(D)
        self.self_attn = Attention(D, args.num_heads, args.qkv_bias)
        self.norm_temp_attn = layer_norm(D)
        self.temp_attn = Attention(D, args.num_heads, args.qkv_bias)
        self.norm_mlp = layer_norm(D)
        self.mlp = Mlp(D, args.mlp_hidden)


class DiTBlock(Block):
    def forward(self, q: Tensor, mod: tuple[Tensor, ...], ctx: tuple[Tensor, Tensor]) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        q = q + gate_msa * self.self_attn(self.norm_self_attn(q) * (1 + scale_msa) + shift_msa)
        q = q + self.temp_attn.neighbourhood(self.norm_temp_attn(q), *ctx)  # no modulation, no gate
        return q + gate_mlp * self.mlp(self.norm_mlp(q) * (1 + scale_mlp) + shift_mlp)


class DecoderBlock(Block):
    def forward(self, r: Tensor, qt: Tensor, ctx: tuple[Tensor, Tensor]) -> Tensor:
        # The latent query tokens qt join the self-attention but are not updated by the block.
        s = torch.cat([r, qt], dim=1)
        s = s + self.self_attn(self.norm_self_attn(s))
        y = s[:, : r.shape[1]]
        y = y + self.temp_attn.neighbourhood(self.norm_temp_attn(y), *ctx)
        return y + self.mlp(self.norm_mlp(y))


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIMESTEP_FEATURES, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_features(t).to(self.mlp[0].weight.dtype))


# ---------------------------------------------------------------------------------------------
# The network


def _blocks_of(tokens: Tensor, grid: tuple[int, int], pooled: bool) -> Tensor:
    """Group [B, N, C] tokens per query position: 2x2 blocks [B, M, 4, C] (pooled) or [B, N, 1, C]."""
    if not pooled:
        return tokens.unsqueeze(2)
    B, _, C = tokens.shape
    ph, pw = grid
    t = tokens.view(B, ph // 2, 2, pw // 2, 2, C).permute(0, 1, 3, 2, 4, 5)
    return t.reshape(B, (ph // 2) * (pw // 2), 4, C)


FrameContext = tuple[list[Tensor], list[Tensor]]  # per DiT block, per decoder block: one frame's keys/values


class Eden(nn.Module):
    """EDEN: `encode_tokens` is the cloud stage's network; `velocity` and `decode` the edge's."""

    def __init__(self, config: EdenConfig, stages: Iterable[str] = ALL_STAGES):
        super().__init__()
        self.config = config
        self.args = args = config.model_args
        self.weights_source = "uninitialised"  # a file path, a name or "random (seed N)": for logs, never /health
        self.weights_name = "uninitialised"  # what runs, never a path (edensplit.model.sources): for /health too
        self.weights_repository: str | None = None  # weights from the Hub: the repository and the commit
        self.weights_revision: str | None = None
        self.weights_digest = ""  # a short digest of the checkpoint file, or of the random weights' config and seed
        self.stages = frozenset(stages)
        if not self.stages or not self.stages <= ALL_STAGES:
            raise ValueError(f"stages must be a non-empty subset of {sorted(ALL_STAGES)}")
        D, L, p = args.hidden_dim, args.latent_dim, args.patch_size
        if INTERPOLATE in self.stages:
            self.proj_in = nn.Linear(L, D)
        if ENCODE in self.stages:
            self.patch_cond_dit = nn.Conv2d(args.in_dim, D, kernel_size=p, stride=p)
            self.norm_cond_dit = layer_norm(D)
        if INTERPOLATE in self.stages:
            self.dit_blocks = nn.ModuleList(DiTBlock(args) for _ in range(args.dit_depth))
            self.norm_out = layer_norm(D)
            self.proj_out = nn.Linear(D, 2 * L)
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
            self.difference_embedder = nn.Linear(1, D)
            self.denoise_timestep_embedder = TimestepEmbedder(D)
        if ENCODE in self.stages:
            self.patch_cond_dec = nn.Conv2d(args.in_dim, D, kernel_size=p, stride=p)
            self.norm_cond_dec = layer_norm(D)
        if INTERPOLATE in self.stages:
            self.proj_token = nn.Linear(L, D)
            self.decoder_blocks = nn.ModuleList(DecoderBlock(args) for _ in range(args.decoder_depth))
            self.unpatchify = nn.Sequential(
                layer_norm(D), nn.Linear(D, p * p * args.out_dim), nn.GELU(),
                nn.Linear(p * p * args.out_dim, p * p * args.out_dim),
            )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def pos(self, grid: tuple[int, int], scale: int) -> Tensor:
        return pos_embed(grid[0], grid[1], self.args.hidden_dim, scale, self.device, self.dtype)

    # -- encode stage ---------------------------------------------------------------------------

    def encode_tokens(self, x_norm: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised padded frames [B, 3, H', W'] -> (cond_dit, cond_dec), each [B, N, D]."""
        p = self.args.patch_size
        grid = (x_norm.shape[-2] // p, x_norm.shape[-1] // p)
        pos1 = self.pos(grid, 1)

        def branch(patch: nn.Conv2d, norm: nn.LayerNorm) -> Tensor:
            return norm(patch(x_norm).flatten(2).transpose(1, 2) + pos1)

        return branch(self.patch_cond_dit, self.norm_cond_dit), branch(self.patch_cond_dec, self.norm_cond_dec)

    # -- interpolate stage ----------------------------------------------------------------------

    def frame_context(self, cond_dit: Tensor, cond_dec: Tensor, grid: tuple[int, int]) -> FrameContext:
        """What frames contribute to every block's temporal attention: the keys/values of their tokens, per DiT
        block (2x2-pooled neighbourhoods) and per decoder block. They depend on the frame alone, so a video's
        inner frame computes them once for both pairs it belongs to, and every sampler step reuses them."""
        dit, dec = _blocks_of(cond_dit, grid, pooled=True), _blocks_of(cond_dec, grid, pooled=False)
        return ([b.temp_attn.context_kv(dit) for b in self.dit_blocks],
                [b.temp_attn.context_kv(dec) for b in self.decoder_blocks])

    def condition(self, difference: Tensor) -> Tensor:
        """The normalised difference scalar [B] -> its embedding [B, D], shared by every step."""
        return self.difference_embedder(difference.to(self.dtype)[:, None])

    def velocity(self, x: Tensor, t: Tensor, diff_emb: Tensor, ctx: list[tuple[Tensor, Tensor]],
                 grid: tuple[int, int]) -> Tensor:
        """The DiT: latents x [B, M, L] at times t [B] -> velocity [B, M, L]."""
        c = self.denoise_timestep_embedder(t) + diff_emb
        mod = tuple(m.unsqueeze(1) for m in self.adaLN_modulation(c).chunk(6, dim=1))  # one for all blocks
        q = self.proj_in(x) + self.pos(grid, 2)
        for block, kv in zip(self.dit_blocks, ctx, strict=True):
            q = block(q, mod, kv)
        return self.proj_out(self.norm_out(q))[..., : self.args.latent_dim]

    def decode(self, z: Tensor, ctx: list[tuple[Tensor, Tensor]], grid: tuple[int, int]) -> Tensor:
        """Latents z [B, M, L] (already un-scaled) -> normalised padded image [B, 3, H', W']."""
        B, D, p = z.shape[0], self.args.hidden_dim, self.args.patch_size
        ph, pw = grid
        qt = self.proj_token(z)
        coarse = qt.transpose(1, 2).reshape(B, D, ph // 2, pw // 2)
        r = F.interpolate(coarse, size=(ph, pw), mode="bicubic", align_corners=False)
        r = r.flatten(2).transpose(1, 2) + self.pos(grid, 1)
        qt = qt + self.pos(grid, 2)
        for block, kv in zip(self.decoder_blocks, ctx, strict=True):
            r = block(r, qt, kv)
        patches = self.unpatchify(r)  # [B, N, p*p*3], each patch ordered (row, col, channel)
        img = patches.view(B, ph, pw, p, p, self.args.out_dim).permute(0, 5, 1, 3, 2, 4)
        return img.reshape(B, self.args.out_dim, ph * p, pw * p)
