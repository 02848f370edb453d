# This file is part of meas_rbnet.
"""Training of the frame VAE of the sequence model with the paper's loss (log-cosh + 8e-5
KL), Adam: `VAETrainConfig` and `train_vae`.

`sequence.train` re-exports these names (the old import path).
"""

__all__ = [
    "VAETrainConfig",
    "train_vae",
]

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..nn import registry


@dataclasses.dataclass
class VAETrainConfig:
    """How to train the frame VAE.

    Attributes
    ----------
    hyperparameters : `dict`
        `lsst.meas.rbnet.nn.vae.FrameVAE` arguments (``in_channels`` and ``frame_size``
        are set from the frames).
    lr : `float`
        Adam learning rate (the paper: 5e-5 for 100 epochs on a million frames; a
        larger rate suits the smaller sets trained here).
    epochs : `int`
        Passes over the frames.
    batch_size : `int`
        Frames per step.
    max_frames : `int`
        Train on a random subset of at most this many frames (0: all).
    seed : `int`
        Random seed.
    device : `str`
        Torch device.
    """

    hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 256
    max_frames: int = 0
    seed: int = 0
    device: str = "cpu"


def train_vae(
    frames: np.ndarray, config: VAETrainConfig | None = None, log: Callable[[str], None] | None = None
) -> tuple[torch.nn.Module, dict[str, Any], list[dict[str, float]]]:
    """Train the frame VAE.

    Parameters
    ----------
    frames : `numpy.ndarray`
        ``(N, C, F, F)`` float32 normalised frames (non-finite pixels are set to 0).
    config : `VAETrainConfig`, optional
        Training settings.
    log : callable, optional
        Called with one line per epoch.

    Returns
    -------
    vae : `lsst.meas.rbnet.nn.vae.FrameVAE`
        In eval mode.
    hyperparameters : `dict`
        Arguments that rebuild it with ``nn.build("vae", ...)``.
    history : `list` [`dict`]
        Per epoch: ``epoch``, ``loss``, ``reconstruction``, ``kl``, ``seconds``.
    """
    config = config or VAETrainConfig()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[2] != frames.shape[3]:
        raise ValueError(f"train_vae expects frames (N, C, F, F), got shape {frames.shape}.")
    if len(frames) < 2:
        raise ValueError("train_vae needs at least 2 frames.")
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    if config.max_frames and len(frames) > config.max_frames:
        frames = frames[np.sort(rng.choice(len(frames), config.max_frames, replace=False))]
    data = torch.from_numpy(
        np.nan_to_num(np.asarray(frames, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    )
    hp = dict(config.hyperparameters)
    hp["in_channels"] = int(frames.shape[1])
    hp["frame_size"] = int(frames.shape[2])
    vae = registry.build("vae", **hp).to(config.device)
    opt = torch.optim.Adam(vae.parameters(), lr=config.lr)
    history = []
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        vae.train()
        perm = torch.from_numpy(rng.permutation(len(data)))
        sums = np.zeros(3)
        n = 0
        for i in range(0, len(data), config.batch_size):
            xb = data[perm[i : i + config.batch_size]].to(config.device)
            if len(xb) < 2:  # batch normalisation needs two frames
                continue
            recon, mu, logvar = vae(xb)
            loss, rec, kl = vae.loss(xb, recon, mu, logvar)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += np.array([float(loss.detach()), float(rec.detach()), float(kl.detach())]) * len(xb)
            n += len(xb)
        sums /= max(n, 1)
        history.append(
            {
                "epoch": epoch,
                "loss": sums[0],
                "reconstruction": sums[1],
                "kl": sums[2],
                "seconds": time.perf_counter() - t0,
            }
        )
        if log is not None:
            log(
                f"VAE epoch {epoch:3d}  loss {sums[0]:.5f}  recon {sums[1]:.5f}  KL {sums[2]:.2f}  "
                f"{history[-1]['seconds']:.1f}s"
            )
    return vae.eval(), hp, history
