"""The training-only half of EDEN's tokenizer, and the discriminator that trains against its decoder.

EDEN's first stage is a VAE over the middle frame It conditioned on I0 and I1. Its decoder is the inference
network's decoder (`Eden.decode`, with the conditioning branch `patch_cond_dec` / `norm_cond_dec`); its encoder,
here, compresses It into `latent_dim` channels per latent token and is thrown away once the transformer has been
trained, as the released checkpoint keeps only the decoder.

The encoder patchifies It with the decoder's own conditioning convolution (one patchify for all three frames),
pools its tokens 2x2 into latent queries, and runs blocks in which the queries attend to themselves and It's
tokens together, then to the 2x2 neighbourhoods of I0's and I1's tokens (temporal attention, as in the DiT).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edensplit.model.config import ModelArgs
from edensplit.model.eden import Block, Eden, _blocks_of

LOGVAR_RANGE = (-30.0, 20.0)


@dataclass(frozen=True)
class TokenizerArgs:
    encoder_depth: int = 2
    disc_channels: int = 32  # the discriminator's first layer; doubled at each later one
    disc_layers: int = 2


class EncoderBlock(Block):
    def forward(self, q: Tensor, mid: Tensor, ctx: tuple[Tensor, Tensor]) -> Tensor:
        # The middle frame's tokens join the self-attention but are not updated: only the queries are.
        s = torch.cat([mid, q], dim=1)
        s = s + self.self_attn(self.norm_self_attn(s))
        y = s[:, mid.shape[1]:]
        y = y + self.temp_attn.neighbourhood(self.norm_temp_attn(y), *ctx)
        return y + self.mlp(self.norm_mlp(y))


class Posterior:
    """A diagonal Gaussian over latents, from moments [B, M, 2L] (means first, then log-variances)."""

    def __init__(self, moments: Tensor):
        self.mean, logvar = moments.chunk(2, dim=-1)
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self) -> Tensor:
        return self.mean + self.std * torch.randn_like(self.mean)

    def kl(self) -> Tensor:
        """KL divergence to the standard normal, summed per sample -> [B]."""
        return 0.5 * (self.mean**2 + self.std**2 - 1 - self.logvar).sum(dim=(1, 2))


class TokenizerEncoder(nn.Module):
    """It (normalised with the pair's statistics) + I0's and I1's decoder tokens -> a posterior over latents."""

    def __init__(self, args: ModelArgs, depth: int):
        super().__init__()
        self.blocks = nn.ModuleList(EncoderBlock(args) for _ in range(depth))
        self.proj_latent = nn.Linear(args.hidden_dim, 2 * args.latent_dim)

    def forward(self, eden: Eden, mid_norm: Tensor, cond0: Tensor, cond1: Tensor) -> Posterior:
        p = eden.args.patch_size
        grid = (mid_norm.shape[-2] // p, mid_norm.shape[-1] // p)
        tokens = eden.patch_cond_dec(mid_norm)  # [B, D, ph, pw]
        q = F.avg_pool2d(tokens, 2).flatten(2).transpose(1, 2) + eden.pos(grid, 2)
        mid = tokens.flatten(2).transpose(1, 2) + eden.pos(grid, 1)
        n0, n1 = _blocks_of(cond0, grid, pooled=True), _blocks_of(cond1, grid, pooled=True)
        for block in self.blocks:
            ctx = (block.temp_attn.context_kv(n0), block.temp_attn.context_kv(n1))
            q = block(q, mid, ctx)
        return Posterior(self.proj_latent(q))


class MinibatchStd(nn.Module):
    """Appends the batch's mean standard deviation as one more channel (it lets the critic see variety)."""

    def forward(self, x: Tensor) -> Tensor:
        s = x.std(dim=0).mean().expand(x.shape[0], 1, *x.shape[2:])
        return torch.cat([x, s], dim=1)


class Discriminator(nn.Module):
    """A PatchGAN critic: strided 4x4 convolutions with batch norm and leaky ReLU, one logit per patch."""

    def __init__(self, args: TokenizerArgs):
        super().__init__()
        ch = args.disc_channels
        layers: list[nn.Module] = [nn.Conv2d(3, ch, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        for i in range(1, args.disc_layers + 1):
            stride = 2 if i < args.disc_layers else 1
            layers += [nn.Conv2d(ch, ch * 2, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(ch * 2, track_running_stats=False), nn.LeakyReLU(0.2)]
            ch *= 2
        layers += [MinibatchStd(), nn.Conv2d(ch + 1, 1, 4, stride=1, padding=1)]
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Images in [-1, 1] [B, 3, H, W] -> logits [B, 1, h, w]."""
        return self.main(x)
