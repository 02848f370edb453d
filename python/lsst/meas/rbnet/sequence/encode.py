# This file is part of meas_rbnet.
"""Frames to latents with a trained VAE, in batches.

For inference (`fused_encoder`) the encoder is rewritten into an equivalent, faster
form (the same numbers to float rounding):

- batch normalisations are folded into the preceding convolutions (in eval mode a
  batch norm is only an affine map per channel);
- the last convolutions, whose inputs are only a few pixels wide (4x4 and 2x2 for
  28-pixel frames), become dense matrix products: a convolution is linear, so its
  matrix is found by applying it to the unit basis. On a CPU a 2x2 -> 1x1 strided
  convolution is many times slower than the equivalent matrix product;
- the remaining convolutions run in channels-last memory order.

``dtype=torch.bfloat16`` runs the convolutions and dense layers in bfloat16 (several
times faster on CPUs with AMX or AVX-512 BF16 units) and the two linear heads that
give ``mu`` and ``logvar`` in float32, so the latents are not rounded to bfloat16's 3
significant digits on output; the default is float32.
"""

__all__ = ["fused_encoder", "encode_frames"]

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..nn.vae import FrameVAE

#: Convolutions whose input has at most this many pixels become dense layers.
_DENSE_MAX_PIXELS = 16


def _as_dense(conv: nn.Conv2d, in_shape: tuple[int, int, int]) -> nn.Linear:
    """The `nn.Linear` equal to ``conv`` on flattened ``in_shape`` inputs (flattened outputs)."""
    n_in = in_shape[0] * in_shape[1] * in_shape[2]
    with torch.no_grad():
        basis = torch.eye(n_in, dtype=conv.weight.dtype).view(n_in, *in_shape)
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
        out = conv(basis) - bias.view(1, -1, 1, 1)
        lin = nn.Linear(n_in, out[0].numel())
        lin.weight.copy_(out.flatten(1).T)
        lin.bias.copy_(bias.repeat_interleave(out.shape[2] * out.shape[3]))
    return lin


class _FusedEncoder(nn.Module):
    """The encoder of a `FrameVAE` rewritten for inference, returning ``(mu, logvar)``."""

    def __init__(self, vae: FrameVAE):
        super().__init__()
        layers = list(vae.encoder)
        fused: list[nn.Module] = []
        i = 0
        while i < len(layers):
            layer = layers[i]
            if (
                isinstance(layer, nn.Conv2d)
                and i + 1 < len(layers)
                and isinstance(layers[i + 1], nn.BatchNorm2d)
            ):
                fused.append(fuse_conv_bn_eval(layer.eval(), layers[i + 1].eval()))
                i += 2
            else:
                fused.append(layer)
                i += 1
        # Input shape of every layer, from a dry run at the padded size.
        shapes = []
        with torch.no_grad():
            h = torch.zeros(1, vae.in_channels, vae.padded_size, vae.padded_size)
            for layer in fused:
                shapes.append(tuple(h.shape[1:]))
                h = layer(h)
        # The tail from the first small convolution on is turned into dense layers.
        start = len(fused)
        for k in range(len(fused) - 1, -1, -1):
            if isinstance(fused[k], nn.Conv2d):
                if shapes[k][1] * shapes[k][2] > _DENSE_MAX_PIXELS:
                    break
                start = k
        tail = [
            _as_dense(m, shapes[k]) if isinstance(m, nn.Conv2d) else m
            for k, m in enumerate(fused[start:], start)
        ]
        self.conv = nn.Sequential(*fused[:start]).to(memory_format=torch.channels_last)
        self.dense = nn.Sequential(*tail)
        self.fc_mu = vae.fc_mu
        self.fc_logvar = vae.fc_logvar
        self.pad = vae._pad
        self.frame_size = vae.frame_size
        self.in_channels = vae.in_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pad != (0, 0):
            x = nn.functional.pad(x, (self.pad[0], self.pad[1], self.pad[0], self.pad[1]))
        h = self.conv(x.contiguous(memory_format=torch.channels_last))
        # Flatten in (C, H, W) order, as the dense layers and the linear heads expect.
        h = self.dense(h.contiguous().flatten(1))
        # The heads run in their own dtype (float32 even when the rest is bfloat16).
        h = h.to(self.fc_mu.weight.dtype)
        return self.fc_mu(h), self.fc_logvar(h)


def fused_encoder(vae: FrameVAE, dtype: torch.dtype = torch.float32) -> nn.Module:
    """An inference-only copy of ``vae``'s encoder (see the module docstring), in ``dtype``.

    The returned module maps ``(N, C, F, F)`` frames to ``(mu, logvar)``; it does not
    share weights with ``vae``.
    """
    if not isinstance(vae, FrameVAE):
        raise TypeError(f"fused_encoder needs a FrameVAE, got {type(vae).__name__}.")
    import copy

    enc = _FusedEncoder(copy.deepcopy(vae).eval()).eval()
    enc.conv.to(dtype)
    enc.dense.to(dtype)
    return enc


@torch.inference_mode()
def encode_frames(
    vae: FrameVAE | nn.Module,
    frames: np.ndarray,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    return_logvar: bool = False,
    dtype: torch.dtype = torch.float32,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Encode frames to latent means (and log-variances), batch by batch.

    Parameters
    ----------
    vae : `lsst.meas.rbnet.nn.vae.FrameVAE` or the output of `fused_encoder`
        Trained VAE; a `FrameVAE` is fused on the fly.
    frames : `numpy.ndarray`
        ``(N, C, F, F)`` normalised frames (may be a memory map; read one batch at a
        time). Non-finite pixels are set to 0.
    batch_size : `int`
        Frames per forward pass.
    device : `str` or `torch.device`
        Where to run.
    return_logvar : `bool`
        Also return the log-variances.
    dtype : `torch.dtype`
        Compute precision when ``vae`` is a `FrameVAE` (``torch.bfloat16`` is faster
        on CPUs with bfloat16 units; latents within about 1%).

    Returns
    -------
    mu : `numpy.ndarray`
        ``(N, latent_dim)`` float32; with ``return_logvar`` a tuple ``(mu, logvar)``.
    """
    enc = fused_encoder(vae, dtype) if isinstance(vae, FrameVAE) else vae
    enc = enc.to(device).eval()
    dtype = next(enc.parameters()).dtype  # the first layer's (bfloat16 or float32)
    if frames.ndim != 4 or frames.shape[1:] != (enc.in_channels, enc.frame_size, enc.frame_size):
        raise ValueError(
            f"encode_frames: expected frames (N, {enc.in_channels}, {enc.frame_size}, {enc.frame_size}), "
            f"got {frames.shape}."
        )
    n = frames.shape[0]
    latent = enc.fc_mu.out_features
    mu = np.empty((n, latent), dtype=np.float32)
    logvar = np.empty((n, latent), dtype=np.float32) if return_logvar else None
    for i in range(0, n, batch_size):
        chunk = np.nan_to_num(
            np.asarray(frames[i : i + batch_size], dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0
        )
        m, lv = enc(torch.from_numpy(chunk).to(device=device, dtype=dtype))
        mu[i : i + len(chunk)] = m.float().cpu().numpy()
        if logvar is not None:
            logvar[i : i + len(chunk)] = lv.float().cpu().numpy()
    return (mu, logvar) if return_logvar else mu
