"""The tokenizer's losses: reconstruction, a structural term in place of LPIPS, KL, and the adversarial hinge.

EDEN trains its tokenizer on L1 + LPIPS + a small KL, with a PatchGAN joining late (weighted adaptively, as in
latent diffusion's VQGAN/KL losses). LPIPS needs ImageNet-pretrained VGG/AlexNet weights, which cannot be
downloaded here, so `structural` stands in for it: 1 - SSIM (local means, contrast and structure over 11x11
Gaussian windows) plus an L1 on image gradients at two scales. Both penalise what LPIPS is there to penalise in
a reconstruction (blur and misplaced edges, which plain L1 tolerates) and need no pretrained network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from edensplit.training.metrics import ssim_map

ADAPTIVE_MAX = 1e4


def _gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def gradient_l1(x: Tensor, y: Tensor, scales: int = 2) -> Tensor:
    """Mean L1 between the horizontal and vertical differences of x and y, at full and half resolution."""
    total = x.new_zeros(())
    for s in range(scales):
        if s:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        for gx, gy in zip(_gradients(x), _gradients(y), strict=True):
            total = total + (gx - gy).abs().mean()
    return total


def structural(pred: Tensor, truth: Tensor) -> Tensor:
    """The stand-in for LPIPS: (1 - SSIM) + gradient L1, images [B, 3, H, W] in [0, 1]."""
    return (1 - ssim_map(pred, truth)).mean() + gradient_l1(pred, truth)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def adaptive_weight(nll: Tensor, g_loss: Tensor, last_layer: Tensor, scale: float) -> Tensor:
    """Balances the adversarial term against the reconstruction at the decoder's last layer: the ratio of the two
    losses' gradient norms there, times `scale`."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, ADAPTIVE_MAX).detach() * scale
