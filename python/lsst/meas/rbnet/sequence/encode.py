# This file is part of meas_rbnet.
"""Frames to latents with a trained VAE, in batches.

For inference the encoder's batch normalisations are folded into the preceding
convolutions (`fused_encoder`): the same numbers (to float rounding) at a fraction of
the cost, since batch norm in eval mode is only an affine map per channel.
"""

__all__ = ["fused_encoder", "encode_frames"]

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..nn.vae import FrameVAE


class _FusedEncoder(nn.Module):
    """The encoder of a `FrameVAE` with batch norms folded, returning ``(mu, logvar)``."""

    def __init__(self, vae: FrameVAE):
        super().__init__()
        layers = list(vae.encoder)
        fused: list[nn.Module] = []
        i = 0
        while i < len(layers):
            layer = layers[i]
            if isinstance(layer, nn.Conv2d) and i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d):
                fused.append(fuse_conv_bn_eval(layer.eval(), layers[i + 1].eval()))
                i += 2
            else:
                fused.append(layer)
                i += 1
        self.body = nn.Sequential(*fused)
        self.fc_mu = vae.fc_mu
        self.fc_logvar = vae.fc_logvar
        self.pad = vae._pad
        self.frame_size = vae.frame_size
        self.in_channels = vae.in_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pad != (0, 0):
            x = nn.functional.pad(x, (self.pad[0], self.pad[1], self.pad[0], self.pad[1]))
        h = self.body(x).flatten(1)
        return self.fc_mu(h), self.fc_logvar(h)


def fused_encoder(vae: FrameVAE) -> nn.Module:
    """An inference-only copy of ``vae``'s encoder with batch norm folded into the convolutions."""
    if not isinstance(vae, FrameVAE):
        raise TypeError(f"fused_encoder needs a FrameVAE, got {type(vae).__name__}.")
    return _FusedEncoder(vae).eval()


@torch.inference_mode()
def encode_frames(
    vae: FrameVAE | nn.Module,
    frames: np.ndarray,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    return_logvar: bool = False,
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

    Returns
    -------
    mu : `numpy.ndarray`
        ``(N, latent_dim)`` float32; with ``return_logvar`` a tuple ``(mu, logvar)``.
    """
    enc = fused_encoder(vae) if isinstance(vae, FrameVAE) else vae
    enc = enc.to(device).eval()
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
        chunk = np.nan_to_num(np.asarray(frames[i : i + batch_size], dtype=np.float32), nan=0.0, posinf=0.0,
                              neginf=0.0)
        m, lv = enc(torch.from_numpy(chunk).to(device))
        mu[i : i + len(chunk)] = m.float().cpu().numpy()
        if logvar is not None:
            logvar[i : i + len(chunk)] = lv.float().cpu().numpy()
    return (mu, logvar) if return_logvar else mu
