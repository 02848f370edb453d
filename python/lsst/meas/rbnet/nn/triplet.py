# This file is part of meas_rbnet.
"""Triplet networks: CNNs on ``(N, C, S, S)`` stamps returning real/bogus logits.

Two architectures are registered:

``"triplet_cnn"`` (`TripletCNN`)
    The default model: four 3x3 convolution blocks (16, 32, 64, 64 channels)
    with batch normalisation, overlapping max pooling between blocks, global
    pooling (mean, max and the centre pixel, i.e. the source position) and a
    small head: 73,105 parameters for triplets. Global pooling makes the
    parameter count independent of the stamp size. On 31x31x3 stamps it costs
    about 1/7 of the multiply-adds of ``braai_like`` on 63x63x3; on 2 CPU
    threads it scores about 25,000 prepared stamps per second, 5 times as many
    as ``braai_like`` (``benchmarks/bench_scoring.py``). The receptive field of
    the last block (45 pixels) covers the whole stamp.

``"braai_like"`` (`BraaiLike`)
    A VGG-like network in the style of ZTF's braai (conv 16, 16, pool 2,
    conv 32, 32, pool 4, dense 256, dense 1, "valid" convolutions): 312,081
    parameters on 63x63x3 input. It is the comparison in the benchmarks and the
    network of a ZTF-style 63x63 configuration.

Both return logits of ``P(real)`` (``constants.REAL == 1``); the calibrated
probability is ``sigmoid(logit / temperature)`` with the temperature of the
model package. Invariance to 90-degree rotations and flips comes from training
augmentation and optional test-time averaging in the scorer; `TripletCNN` can
also be made exactly invariant with ``symmetric_pooling=True``.
"""

__all__ = ["POOLINGS", "BraaiLike", "TripletCNN", "dihedral_transform", "dihedral_transforms"]

from collections.abc import Sequence

import torch
from torch import nn

from ..constants import ALL_CLASSES, DEFAULT_STAMP_SIZE
from .registration import check_dropout, check_int, register

#: Global pooling modes of `TripletCNN`:
#: ``"avg"`` and ``"max"`` pool the last feature map; ``"avgmax"`` concatenates both;
#: ``"avgmaxcenter"`` adds the feature vector at the centre of the last map (the
#: source position, which global pooling alone cannot single out).
POOLINGS: tuple[str, ...] = ("avg", "max", "avgmax", "avgmaxcenter")


def dihedral_transforms(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 images of ``x`` under the dihedral group of the square.

    Parameters
    ----------
    x : `torch.Tensor`
        ``(..., H, W)`` with ``H == W``.

    Returns
    -------
    images : `list` [`torch.Tensor`]
        Rotations by 0, 90, 180, 270 degrees, then the same of the left-right
        flip. The set is the same (in another order) for any transformed ``x``.
    """
    return [dihedral_transform(x, k) for k in range(8)]


def dihedral_transform(x: torch.Tensor, k: int) -> torch.Tensor:
    """Element ``k`` (0 to 7) of the dihedral group applied to ``x`` (..., H, W).

    ``k % 4`` quarter turns, after a left-right flip when ``k >= 4``; ``k == 0``
    returns ``x`` itself.
    """
    if not 0 <= k < 8:
        raise ValueError(f"dihedral transform index must be in 0..7, got {k}.")
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x


def _check_stamps(network: nn.Module, x: torch.Tensor) -> None:
    """Raise unless ``x`` is ``(N, C, S, S)`` with the ``in_channels`` and ``stamp_size`` of ``network``."""
    c, s = network.in_channels, network.stamp_size
    if x.ndim != 4 or x.shape[1] != c or x.shape[2] != s or x.shape[3] != s:
        raise ValueError(f"{type(network).__name__} expects (N, {c}, {s}, {s}) stamps, got {tuple(x.shape)}.")


# The classes are the registered builders: their arguments are the hyperparameters.
@register("triplet_cnn")
class TripletCNN(nn.Module):
    """Small CNN on triplet (or difference-only) stamps.

    Layout: for each width ``w`` in ``widths`` a block of ``convs_per_block``
    3x3 "same" convolutions (conv, batch norm, ReLU); between blocks a 3x3
    max pool with stride 2 (odd sizes stay odd: 31 -> 15 -> 7 -> 3; 63 -> 31 -> 15 -> 7);
    then global pooling, dropout, a hidden layer of ``hidden`` units and the
    logit. With ``n_classes > 0`` a second linear head on the hidden layer gives
    logits over `constants.ALL_CLASSES`.

    Parameters
    ----------
    in_channels : `int`
        Number of stamp channels ``C`` (3 for a triplet, 1 for difference-only).
    stamp_size : `int`
        Stamp side ``S`` in pixels. Global pooling makes the weights independent
        of it, but it is checked against the input so a wrong preparation fails.
    widths : `list` [`int`]
        Channels of each convolution block.
    convs_per_block : `int`
        Convolutions per block (1 or 2 are sensible).
    hidden : `int`
        Units of the hidden dense layer (0: the logit is linear in the pooled features).
    dropout : `float`
        Dropout probability before the hidden layer and before the output.
    n_classes : `int`
        0 for no class head; otherwise ``len(constants.ALL_CLASSES)``.
    pooling : `str`
        One of `POOLINGS`.
    symmetric_pooling : `bool`
        If true, pooled features are averaged over the 8 rotations/flips of the
        input, making the network exactly invariant to them (at 8 times the
        convolution cost).
    """

    def __init__(
        self,
        in_channels: int = 3,
        stamp_size: int = DEFAULT_STAMP_SIZE,
        widths: Sequence[int] = (16, 32, 64, 64),
        convs_per_block: int = 1,
        hidden: int = 64,
        dropout: float = 0.2,
        n_classes: int = 0,
        pooling: str = "avgmaxcenter",
        symmetric_pooling: bool = False,
    ):
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("stamp_size", stamp_size, minimum=3)
        check_int("convs_per_block", convs_per_block)
        check_int("hidden", hidden, minimum=0)
        dropout = check_dropout("dropout", dropout)
        widths = list(widths) if isinstance(widths, (list, tuple)) else widths
        if not isinstance(widths, list) or not widths:
            raise ValueError(f"Hyperparameter widths must be a non-empty list of integers, got {widths!r}.")
        for w in widths:
            check_int("widths[...]", w)
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 0:
            raise ValueError(f"Hyperparameter n_classes must be an integer >= 0, got {n_classes!r}.")
        if n_classes not in (0, len(ALL_CLASSES)):
            raise ValueError(
                f"Hyperparameter n_classes must be 0 or len(ALL_CLASSES) = {len(ALL_CLASSES)}, "
                f"got {n_classes}."
            )
        if pooling not in POOLINGS:
            raise ValueError(f"Hyperparameter pooling must be one of {POOLINGS}, got {pooling!r}.")
        # The map shrinks by (s - 1) // 2 per pool; it must stay at least 1 pixel.
        size = stamp_size
        for _ in widths[1:]:
            size = (size - 3) // 2 + 1
            if size < 1:
                raise ValueError(
                    f"stamp_size {stamp_size} is too small for {len(widths)} blocks "
                    "(pooling leaves no pixel)."
                )
        self.in_channels = in_channels
        self.stamp_size = stamp_size
        self.n_classes = n_classes
        self.pooling = pooling
        self.symmetric_pooling = bool(symmetric_pooling)
        self.final_size = size

        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
            for _ in range(convs_per_block):
                # No conv bias: batch norm supplies the offset.
                layers += [
                    nn.Conv2d(c, w, 3, padding=1, bias=False),
                    nn.BatchNorm2d(w),
                    nn.ReLU(inplace=True),
                ]
                c = w
        self.features = nn.Sequential(*layers)
        n_pooled = c * {"avg": 1, "max": 1, "avgmax": 2, "avgmaxcenter": 3}[pooling]
        if hidden:
            self.hidden = nn.Sequential(
                nn.Dropout(dropout), nn.Linear(n_pooled, hidden), nn.ReLU(inplace=True)
            )
            n_head = hidden
        else:
            self.hidden = nn.Identity()
            n_head = n_pooled
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(n_head, 1)
        self.class_head = nn.Linear(n_head, n_classes) if n_classes else None

    def _pool(self, f: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.pooling in ("avg", "avgmax", "avgmaxcenter"):
            parts.append(f.mean(dim=(2, 3)))
        if self.pooling in ("max", "avgmax", "avgmaxcenter"):
            parts.append(f.amax(dim=(2, 3)))
        if self.pooling == "avgmaxcenter":
            c = self.final_size // 2
            parts.append(f[:, :, c, c])
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(N, F)`` of stamps ``x`` ``(N, C, S, S)``."""
        _check_stamps(self, x)
        if not self.symmetric_pooling:
            return self._pool(self.features(x))
        n = x.shape[0]
        pooled = self._pool(self.features(torch.cat(dihedral_transforms(x), dim=0)))
        # Sorting over the group axis makes the mean independent of the order of
        # the 8 images, so invariance is exact, not just up to rounding.
        return torch.sort(pooled.view(8, n, -1), dim=0).values.mean(dim=0)

    def forward_with_classes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Real/bogus logits ``(N,)`` and class logits ``(N, n_classes)`` (None without a class head)."""
        h = self.dropout(self.hidden(self.embed(x)))
        logits = self.head(h).squeeze(1)
        return logits, (self.class_head(h) if self.class_head is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Real/bogus logits ``(N,)`` of stamps ``x`` ``(N, C, S, S)`` float32."""
        # The class head is skipped: scoring needs only the real/bogus logit.
        return self.head(self.dropout(self.hidden(self.embed(x)))).squeeze(1)


@register("braai_like")
class BraaiLike(nn.Module):
    """VGG-like network in the style of ZTF braai (the benchmark comparison).

    conv(16) conv(16) maxpool(2) dropout, conv(32) conv(32) maxpool(4) dropout,
    flatten, dense(``dense``) dropout, dense(1); 3x3 "valid" convolutions with
    ReLU. On 63x63x3 input the flattened map is 6x6x32 and the network has
    312,081 parameters.

    Parameters
    ----------
    in_channels : `int`
        Number of stamp channels.
    stamp_size : `int`
        Stamp side in pixels (63 for ZTF-style stamps); it fixes the dense layer.
    widths : `list` [`int`]
        Channels of the two convolution blocks.
    dense : `int`
        Units of the dense layer.
    dropout : `float`
        Dropout after each block; twice this (capped at 0.5) before the output.
    n_classes : `int`
        0 for no class head; otherwise ``len(constants.ALL_CLASSES)``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        stamp_size: int = 63,
        widths: Sequence[int] = (16, 32),
        dense: int = 256,
        dropout: float = 0.25,
        n_classes: int = 0,
    ):
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("stamp_size", stamp_size, minimum=3)
        check_int("dense", dense)
        dropout = check_dropout("dropout", dropout)
        widths = list(widths) if isinstance(widths, (list, tuple)) else widths
        if not isinstance(widths, list) or len(widths) != 2:
            raise ValueError(f"Hyperparameter widths must be a list of two integers, got {widths!r}.")
        for w in widths:
            check_int("widths[...]", w)
        if (
            isinstance(n_classes, bool)
            or not isinstance(n_classes, int)
            or n_classes not in (0, len(ALL_CLASSES))
        ):
            raise ValueError(
                f"Hyperparameter n_classes must be 0 or len(ALL_CLASSES) = {len(ALL_CLASSES)}, "
                f"got {n_classes!r}."
            )
        size = ((stamp_size - 4) // 2 - 4) // 4
        if size < 1:
            raise ValueError(f"stamp_size {stamp_size} is too small for braai_like (needs at least 20).")
        self.in_channels = in_channels
        self.stamp_size = stamp_size
        self.n_classes = n_classes
        w1, w2 = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w1, 3), nn.ReLU(inplace=True),
            nn.Conv2d(w1, w1, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.Dropout(dropout),
            nn.Conv2d(w1, w2, 3), nn.ReLU(inplace=True),
            nn.Conv2d(w2, w2, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(4), nn.Dropout(dropout),
            nn.Flatten(),
        )  # fmt: skip
        self.hidden = nn.Sequential(nn.Linear(w2 * size * size, dense), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(min(2 * dropout, 0.5))
        self.head = nn.Linear(dense, 1)
        self.class_head = nn.Linear(dense, n_classes) if n_classes else None

    def forward_with_classes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Real/bogus logits ``(N,)`` and class logits (None without a class head)."""
        _check_stamps(self, x)
        h = self.dropout(self.hidden(self.features(x)))
        return self.head(h).squeeze(1), (self.class_head(h) if self.class_head is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Real/bogus logits ``(N,)`` of stamps ``x`` ``(N, C, S, S)`` float32."""
        _check_stamps(self, x)
        return self.head(self.dropout(self.hidden(self.features(x)))).squeeze(1)
