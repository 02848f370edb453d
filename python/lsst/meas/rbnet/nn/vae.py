# This file is part of meas_rbnet.
"""Variational autoencoder mapping one visit's frame to a latent vector.

This is the first stage of the multi-visit (sequence) model of the RB_ZTF paper
(Semenikhin): every ``(C, F, F)`` frame of an object is encoded to a latent mean
and log-variance; a sequence classifier (`lsst.meas.rbnet.nn.sequence`) then reads
the object's sequence of latent means.

Registered as ``"vae"`` (`FrameVAE`). Layout, following the paper: an encoder of
``len(hidden_channels)`` (5) strided convolutions with 32, 64, 128, 256, 512 channels,
each halving the frame side, each followed by batch normalisation and LeakyReLU; two
linear heads give ``mu`` and ``logvar``; the decoder mirrors the encoder with
transposed convolutions. Frames whose side is not a multiple of ``2 ** n_layers``
(28 in the paper) are zero-padded inside the module to the next multiple (32) and the
reconstruction is cropped back, so callers always see ``(C, F, F)``.

The loss (`FrameVAE.loss`) is the paper's: mean log-cosh reconstruction error plus
``kl_weight`` (8e-5) times the KL divergence to the unit normal (summed over latent
dimensions, averaged over the batch).
"""

__all__ = ["FrameVAE", "log_cosh"]

import math
from collections.abc import Sequence

import torch
from torch import nn

from .registration import check_int, register


def log_cosh(d: torch.Tensor) -> torch.Tensor:
    """``log(cosh(d))`` elementwise, stable for large ``|d|`` (no overflow of cosh)."""
    a = d.abs()
    return a + torch.nn.functional.softplus(-2.0 * a) - math.log(2.0)


# The class is the registered builder: its arguments are the hyperparameters.
@register("vae")
class FrameVAE(nn.Module):
    """Convolutional VAE on single frames.

    Parameters
    ----------
    in_channels : `int`
        Channels per frame: 1 for the science frame only (as in the paper), 3 for
        a difference/science/template triplet.
    frame_size : `int`
        Side ``F`` of the square frames (pixels); any value >= 2.
    latent_dim : `int`
        Size of the latent vector (36 in the paper).
    hidden_channels : sequence of `int`
        Channels of the encoder's strided convolutions, each halving the side.
    kernel_size : `int`
        Odd kernel side of the encoder convolutions (3).
    negative_slope : `float`
        Slope of the LeakyReLU for negative inputs.
    kl_weight : `float`
        Weight of the KL term of `loss` (8e-5 in the paper).
    """

    def __init__(
        self,
        in_channels: int = 1,
        frame_size: int = 28,
        latent_dim: int = 36,
        hidden_channels: Sequence[int] = (32, 64, 128, 256, 512),
        kernel_size: int = 3,
        negative_slope: float = 0.01,
        kl_weight: float = 8e-5,
    ):
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels)
        self.frame_size = check_int("frame_size", frame_size, 2)
        self.latent_dim = check_int("latent_dim", latent_dim)
        hidden = [check_int("hidden_channels", int(c)) for c in hidden_channels]
        if not hidden:
            raise ValueError("Hyperparameter hidden_channels needs at least one layer.")
        k = check_int("kernel_size", kernel_size)
        if k % 2 != 1:
            raise ValueError(f"Hyperparameter kernel_size must be odd, got {k}.")
        if not kl_weight >= 0:
            raise ValueError(f"Hyperparameter kl_weight must be >= 0, got {kl_weight!r}.")
        self.kl_weight = float(kl_weight)
        n = len(hidden)
        step = 2**n
        # Pad to a multiple of 2**n so every strided layer halves the side exactly.
        self.padded_size = max(step, -(-self.frame_size // step) * step)
        pad = self.padded_size - self.frame_size
        self._pad = (pad // 2, pad - pad // 2)
        self.bottom_size = self.padded_size // step

        layers: list[nn.Module] = []
        c_in = self.in_channels
        for c in hidden:
            layers += [
                nn.Conv2d(c_in, c, k, stride=2, padding=k // 2),
                nn.BatchNorm2d(c),
                nn.LeakyReLU(negative_slope),
            ]
            c_in = c
        self.encoder = nn.Sequential(*layers)
        flat = hidden[-1] * self.bottom_size**2
        self.fc_mu = nn.Linear(flat, self.latent_dim)
        self.fc_logvar = nn.Linear(flat, self.latent_dim)

        self.fc_decode = nn.Linear(self.latent_dim, flat)
        dec: list[nn.Module] = []
        rev = hidden[::-1] + [hidden[0]]
        for c_a, c_b in zip(rev[:-1], rev[1:]):
            dec += [
                nn.ConvTranspose2d(c_a, c_b, k, stride=2, padding=k // 2, output_padding=1),
                nn.BatchNorm2d(c_b),
                nn.LeakyReLU(negative_slope),
            ]
        # A linear output layer: normalised frames are not bounded, so no tanh/sigmoid.
        dec.append(nn.Conv2d(hidden[0], self.in_channels, k, padding=k // 2))
        self.decoder = nn.Sequential(*dec)
        self._hidden_last = hidden[-1]

    def _check_input(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.frame_size, self.frame_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"FrameVAE expects frames of shape (N, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(x.shape)}."
            )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent mean and log-variance of frames.

        Parameters
        ----------
        x : `torch.Tensor`
            ``(N, C, F, F)`` float frames.

        Returns
        -------
        mu, logvar : `torch.Tensor`
            ``(N, latent_dim)`` each.
        """
        self._check_input(x)
        if self._pad != (0, 0):
            x = nn.functional.pad(x, (self._pad[0], self._pad[1], self._pad[0], self._pad[1]))
        h = self.encoder(x).flatten(1)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Frames ``(N, C, F, F)`` reconstructed from latents ``(N, latent_dim)``."""
        h = self.fc_decode(z).view(-1, self._hidden_last, self.bottom_size, self.bottom_size)
        out = self.decoder(h)
        a = self._pad[0]
        return out[..., a : a + self.frame_size, a : a + self.frame_size]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction, mean and log-variance; samples ``z`` in training, uses ``mu`` in eval."""
        mu, logvar = self.encode(x)
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        return self.decode(z), mu, logvar

    def loss(
        self, x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The paper's loss: ``mean(log_cosh(x - recon)) + kl_weight * KL``.

        Returns
        -------
        total, reconstruction, kl : `torch.Tensor`
            Scalars; ``kl`` is summed over latent dimensions and averaged over the batch.
        """
        rec = log_cosh(x - recon).mean()
        kl = (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
        return rec + self.kl_weight * kl, rec, kl
