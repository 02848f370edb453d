# This file is part of meas_rbnet.
"""Score objects with a sequence model package: frames -> VAE latents -> classifier -> P(real).

A sequence package (``kind="sequence"``) has two components, ``"encoder"`` (the
``"vae"`` architecture) and ``"classifier"`` (a ``"seq_*"`` architecture), and keeps
in ``extra``:

``"frame_size"``
    Side ``F`` of the frames the VAE reads (28 by default, as in the RB_ZTF paper).
``"frame_channels"``
    Channel names of the frames, e.g. ``["science"]`` (the paper) or the triplet.
``"frame_crop"``
    How a frame is cut from a per-visit stamp of the contract's (odd) ``stamp_size``:
    the stamp's first ``F`` rows and columns, so the source pixel
    ``stamp_size // 2`` stays at ``F // 2`` (for 29 -> 28: pixel 14 in both).
``"latent_columns"``
    Latent columns the classifier reads (``[0, latent_dim]``: the means).

The package's input contract is that of the per-visit stamps (``stamp_size`` odd,
e.g. 29; channels; normalisation): frames are normalised per frame and channel with
`lsst.meas.rbnet.cutouts.normalize_stamps` under that contract before encoding.

Scoring streams: objects are taken in chunks of at most ``chunk_frames`` frames,
encoded in batches, then classified in length-bucketed batches, so memory stays
bounded however many objects there are.
"""

__all__ = [
    "SequenceScorer",
    "load_sequence_scorer",
    "score_sequences",
    "frames_from_stamps",
    "native_bf16",
    "encoder_dtype",
]

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from ..constants import CHANNEL_ORDER
from ..cutouts import normalize_stamps
from ..package import ModelPackage, ModelPackageError
from ..runtime import cached_model, checked_dtype, native_bf16, package_key, select_device
from ..runtime import cast_dtype as encoder_dtype
from .aggregate import FRAME_FEATURES, visit_score_features
from .data import collate, length_batches
from .encode import fused_encoder
from .frames import frames_from_stamps

_log = logging.getLogger(__name__)


#: Largest difference of P(real) between bfloat16 and float32 encoding, on probe objects,
#: with which ``precision="auto"`` keeps the faster bfloat16 encoder.
BF16_MAX_ERROR = 0.01


class SequenceScorer:
    """A sequence model package loaded once, ready to score many objects.

    Parameters
    ----------
    package : `lsst.meas.rbnet.package.ModelPackage` or path
        A package of kind ``"sequence"``.
    device : `str`
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (resolved by
        `lsst.meas.rbnet.scoring.select_device`, as for the triplet scorer).
    chunk_frames : `int`
        Frames encoded per chunk of objects (memory bound).
    encode_batch : `int`
        Frames per VAE forward pass.
    classify_frames : `int`
        Padded frames per classifier batch.
    precision : `str`
        Precision of the VAE encoder: ``"auto"`` (default) runs it in bfloat16 where
        the device has native bfloat16 arithmetic (`native_bf16`: CPUs with AMX or
        AVX-512 BF16 units, CUDA GPUs that support it; several times faster there)
        and in float32 elsewhere; ``"float32"`` or ``"bfloat16"`` force one. bfloat16
        keeps about 3 significant digits, so "auto" first scores seeded probe objects
        with both encoders and keeps float32 when their P(real) differ by more than
        `BF16_MAX_ERROR` (``bf16_error`` holds the figure); the choice is the runtime's
        (`lsst.meas.rbnet.runtime.checked_dtype`), probed once per package and device.
        The heads that give the latents and the classifier always run in float32.
    """

    def __init__(
        self,
        package: ModelPackage | str | os.PathLike,
        device: str = "cpu",
        chunk_frames: int = 65536,
        encode_batch: int | None = None,
        classify_frames: int = 65536,
        precision: str = "auto",
    ):
        if not isinstance(package, ModelPackage):
            package = ModelPackage.load(package)
        if package.kind != "sequence":
            raise ModelPackageError(
                f"SequenceScorer needs a package of kind 'sequence', got {package.kind!r}."
            )
        for comp in ("encoder", "classifier"):
            if comp not in package.components:
                raise ModelPackageError(
                    f"a sequence package needs an {comp!r} component, got {sorted(package.components)}."
                )
        self.device = select_device(device)
        self.package = package
        self.vae = package.build("encoder")
        self.classifier = package.build("classifier").to(self.device)
        self.temperature = float(package.temperature)
        self.contract = package.contract
        extra = package.extra
        self.frame_size = int(extra.get("frame_size", self.vae.frame_size))
        self.frame_channels = tuple(extra.get("frame_channels", package.contract.channels))
        cols = extra.get("latent_columns", [0, self.vae.latent_dim])
        self.latent_columns = slice(int(cols[0]), int(cols[1]))
        features = tuple(extra.get("frame_features", ()))
        unknown = [f for f in features if f not in FRAME_FEATURES]
        if unknown:
            raise ModelPackageError(
                f"The sequence package reads frame feature(s) {unknown} that this version does not know "
                f"(known: {FRAME_FEATURES}); it needs a newer lsst.meas.rbnet."
            )
        self.frame_features = features
        width = self.latent_columns.stop - self.latent_columns.start + len(features)
        if getattr(self.classifier, "input_dim", width) != width:
            raise ModelPackageError(
                f"The sequence package's classifier reads {self.classifier.input_dim} values per frame, "
                f"but its latent columns {cols} and frame features {list(features)} give {width}."
            )
        self.chunk_frames = int(chunk_frames)
        self.classify_frames = int(classify_frames)
        self._encoders: dict[torch.dtype, torch.nn.Module] = {}
        # bfloat16 keeps ~3 significant digits. A latent whose spread over frames is small
        # against its value would lose the information the classifier reads, so "auto" takes
        # bfloat16 only where probe objects score the same both ways (the runtime's check,
        # once per package and device).
        self._dtype, self.bf16_error = checked_dtype(
            self.device,
            precision,
            key=("sequence encoder", package_key(package), str(self.device)),
            probe=lambda: self._bf16_score_error(self._fused_encoder(torch.float32)),
            tolerance=BF16_MAX_ERROR,
        )
        if self.bf16_error is not None and self._dtype == torch.float32:
            _log.info(
                "Sequence model %s: bfloat16 encoding moves probe scores by %.3g (> %g); "
                "falling back to float32.",
                package.version,
                self.bf16_error,
                BF16_MAX_ERROR,
            )
        elif self.bf16_error is not None:
            _log.info(
                "Sequence model %s: bfloat16 encoding kept (probe scores within %.3g of float32).",
                package.version,
                self.bf16_error,
            )
        self.encoder = self._fused_encoder(self._dtype)
        # The probe's other encoder is not needed any more.
        self._encoders = {self._dtype: self.encoder}
        if encode_batch is None:
            # Measured on a 2-core Xeon (AMX): bfloat16 is fastest in batches that stay in
            # cache (1024), float32 in larger ones (4096).
            encode_batch = 1024 if self._dtype == torch.bfloat16 and self.device.type == "cpu" else 4096
        self.encode_batch = int(encode_batch)
        _log.info(
            "Sequence model %s on %s: encoder in %s (precision %r), classifier in float32.",
            package.version,
            self.device,
            str(self._dtype).replace("torch.", ""),
            precision,
        )

    def _fused_encoder(self, dtype: torch.dtype) -> torch.nn.Module:
        """The VAE's fused encoder in ``dtype`` on the scorer's device, built once: the bfloat16
        probe and the scorer share it (built outside inference mode, so it serves both)."""
        if dtype not in self._encoders:
            self._encoders[dtype] = fused_encoder(self.vae, dtype).to(self.device)
        return self._encoders[dtype]

    def _bf16_score_error(self, enc32: torch.nn.Module, n_objects: int = 64, n_visits: int = 8) -> float:
        """Largest |P(real)| difference between a bfloat16 encoder and ``enc32`` on probe objects.

        The probe objects are seeded random sequences of frames with noise and a centred
        Gaussian source of random width and flux (in normalised units), random visit
        gaps, and random single-visit scores when the package reads them.
        """
        vae = self.vae
        rng = np.random.default_rng(20261122)
        n = n_objects * n_visits
        f = vae.frame_size
        yy, xx = np.mgrid[:f, :f] - f // 2
        sigma = rng.uniform(0.6, 2.5, (n, 1, 1, 1))
        src = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
        x = rng.normal(size=(n, vae.in_channels, f, f)) + rng.uniform(0, 8, (n, vae.in_channels, 1, 1)) * src
        xt = torch.from_numpy(x.astype(np.float32)).to(self.device)
        enc16 = self._fused_encoder(torch.bfloat16)
        with torch.inference_mode():
            mu32 = enc32(xt)[0].float().cpu().numpy()[:, self.latent_columns]
            mu16 = enc16(xt.to(torch.bfloat16))[0].float().cpu().numpy()[:, self.latent_columns]
        offsets = np.arange(0, n + 1, n_visits)
        times = np.cumsum(rng.exponential(3.0, n))
        visit = rng.uniform(0, 1, n) if self.frame_features else None
        p32 = self.score_latents(mu32, offsets, times, visit)
        p16 = self.score_latents(mu16, offsets, times, visit)
        return float(np.max(np.abs(p16.astype(np.float64) - p32)))

    @property
    def precision(self) -> str:
        """The encoder's precision: ``"float32"`` or ``"bfloat16"``."""
        return "bfloat16" if self._dtype == torch.bfloat16 else "float32"

    @property
    def needs_visit_scores(self) -> bool:
        """Whether the classifier reads the single-visit scores of the frames."""
        return bool(self.frame_features)

    def _check_visit_scores(self, visit_scores: np.ndarray | None, n_frames: int) -> None:
        """Raise unless the package needs no visit scores or ``visit_scores`` has one per frame."""
        if not self.frame_features:
            return
        if visit_scores is None:
            raise ValueError(
                f"This sequence package (version {self.version!r}) reads the single-visit reliability of "
                f"every frame (frame features {list(self.frame_features)}): pass visit_scores, one "
                "P(real) per frame (NaN where a visit was not scored)."
            )
        if np.shape(visit_scores) != (n_frames,):
            raise ValueError(
                f"visit_scores must have one value per frame ({n_frames}), got shape "
                f"{np.shape(visit_scores)}."
            )

    def _with_features(self, latents: np.ndarray, visit_scores: np.ndarray | None) -> np.ndarray:
        self._check_visit_scores(visit_scores, len(latents))
        if not self.frame_features:
            return latents
        feats = visit_score_features(np.asarray(visit_scores), self.frame_features)
        return np.concatenate([np.asarray(latents, dtype=np.float32), feats], axis=1)

    @property
    def version(self) -> str:
        """The package's ``reliabilityVersion``."""
        return self.package.version

    def _select_channels(self, frames: np.ndarray, channels: Sequence[str] | None) -> np.ndarray:
        c = frames.shape[1]
        if channels is None:
            if c == len(self.frame_channels):
                return frames
            if c == len(CHANNEL_ORDER):
                channels = CHANNEL_ORDER
            else:
                raise ValueError(
                    f"Frames have {c} channels; the model reads {self.frame_channels}. "
                    "Pass channels=... to name the frames' channels."
                )
        channels = tuple(channels)
        if len(channels) != c:
            raise ValueError(f"channels {channels} do not match the frames' {c} channels.")
        if channels == self.frame_channels:
            # Already the model's channels in its order (as the task gathers them): no copy.
            return frames
        missing = [ch for ch in self.frame_channels if ch not in channels]
        if missing:
            raise ValueError(f"The model needs channels {self.frame_channels}; the frames lack {missing}.")
        return frames[:, [channels.index(ch) for ch in self.frame_channels]]

    def latents(
        self, frames: np.ndarray, channels: Sequence[str] | None = None, normalized: bool = False
    ) -> np.ndarray:
        """``(N, D)`` float32 latent means of frames (or stamps) ``(N, C, S, S)``."""
        frames = frames_from_stamps(self._select_channels(np.asarray(frames), channels), self.frame_size)
        x = np.ascontiguousarray(frames, dtype=np.float32)
        if normalized:
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        else:
            x = normalize_stamps(x, self.contract)
        out = np.empty((len(x), self.encoder.fc_mu.out_features), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, len(x), self.encode_batch):
                xb = torch.from_numpy(x[i : i + self.encode_batch]).to(device=self.device, dtype=self._dtype)
                mu, _ = self.encoder(xb)
                out[i : i + len(mu)] = mu.float().cpu().numpy()
        return out[:, self.latent_columns]

    def score_latents(
        self,
        latents: np.ndarray,
        offsets: np.ndarray,
        times: np.ndarray | None = None,
        visit_scores: np.ndarray | None = None,
    ) -> np.ndarray:
        """Calibrated ``P(real)`` ``(n_objects,)`` float32 from latents ``(sum T_i, D)``; NaN if empty.

        ``visit_scores`` (one single-visit ``P(real)`` per frame) is needed when the
        package reads frame features (`needs_visit_scores`). A frame with a non-finite
        latent value is left out of its object's sequence (the time feature then runs
        from the previous kept frame); an object left with no frame gets NaN.
        """
        offsets = _check_offsets(offsets, len(latents))
        latents = np.asarray(latents, dtype=np.float32)
        if latents.ndim != 2:
            raise ValueError(f"latents must be (N, D), got shape {latents.shape}.")
        if times is not None and np.shape(times) != (len(latents),):
            raise ValueError(
                f"times must have one value per frame ({len(latents)}), got shape {np.shape(times)}."
            )
        latents = self._with_features(latents, visit_scores)
        n = len(offsets) - 1
        finite = np.isfinite(latents).all(axis=1)
        if not finite.all():
            obj = np.repeat(np.arange(n), np.diff(offsets))
            rows = np.flatnonzero(finite)
            offsets = np.concatenate([[0], np.cumsum(np.bincount(obj[rows], minlength=n))])
            latents = latents[rows]
            times = None if times is None else np.asarray(times)[rows]
        out = np.full(n, np.nan, dtype=np.float32)
        lengths = np.diff(offsets)
        keep = np.flatnonzero(lengths > 0)
        if len(keep) == 0:
            return out
        values = np.ascontiguousarray(latents, dtype=np.float32)
        t = None if times is None else np.asarray(times, dtype=np.float64)
        with torch.inference_mode():
            for b in length_batches(lengths[keep], self.classify_frames, 512):
                batch = collate(values, offsets, keep[b], t, device=self.device)
                z = self.classifier(batch.x, batch.lengths, batch.dt).float().cpu().numpy()
                out[keep[b]] = 1.0 / (1.0 + np.exp(-np.clip(z / self.temperature, -60, 60)))
        return out

    def score(
        self,
        frames: np.ndarray,
        offsets: np.ndarray,
        times: np.ndarray | None = None,
        channels: Sequence[str] | None = None,
        normalized: bool = False,
        visit_scores: np.ndarray | None = None,
    ) -> np.ndarray:
        """Calibrated ``P(real)`` of each object from its frames.

        Parameters
        ----------
        frames : `numpy.ndarray`
            ``(sum T_i, C, S, S)`` raw frames or stamps (pixels, e.g. nJy; NaN where
            no data), objects concatenated, each object's visits in time order.
            ``S >= frame_size``; larger stamps are cut around the source pixel.
        offsets : `numpy.ndarray`
            ``(n_objects + 1,)``; object ``i`` has frames ``offsets[i]:offsets[i + 1]``.
        times : `numpy.ndarray`, optional
            ``(sum T_i,)`` visit times (days, e.g. MJD); without them ``dt = 0``.
        channels : sequence of `str`, optional
            Channel names of ``frames`` (default: the model's, or `CHANNEL_ORDER` for 3).
        normalized : `bool`
            The frames are already normalised as the contract says.
        visit_scores : `numpy.ndarray`, optional
            ``(sum T_i,)`` single-visit ``P(real)`` of each frame (NaN where not
            scored); needed when the package reads them (`needs_visit_scores`).

        Returns
        -------
        reliability : `numpy.ndarray`
            ``(n_objects,)`` float32; NaN for an object with no frame.
        """
        frames = np.asarray(frames) if not isinstance(frames, np.ndarray) else frames
        if frames.ndim != 4:
            raise ValueError(f"frames must be (N, C, S, S), got shape {frames.shape}.")
        offsets = _check_offsets(offsets, len(frames))
        if times is not None and np.shape(times) != (len(frames),):
            raise ValueError(
                f"times must have one value per frame ({len(frames)}), got shape {np.shape(times)}."
            )
        self._check_visit_scores(visit_scores, len(frames))
        n = len(offsets) - 1
        out = np.full(n, np.nan, dtype=np.float32)
        start = 0
        while start < n:
            stop = start + 1
            while stop < n and offsets[stop + 1] - offsets[start] <= self.chunk_frames:
                stop += 1
            a, b = offsets[start], offsets[stop]
            lat = self.latents(frames[a:b], channels, normalized)
            tt = None if times is None else np.asarray(times[a:b], dtype=np.float64)
            vs = None if visit_scores is None else np.asarray(visit_scores[a:b])
            out[start:stop] = self.score_latents(lat, offsets[start : stop + 1] - a, tt, vs)
            start = stop
        return out


def _check_offsets(offsets, n_frames: int) -> np.ndarray:
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != n_frames:
        raise ValueError(
            f"offsets must be (n_objects + 1,) running from 0 to the number of frames ({n_frames})."
        )
    if np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must be non-decreasing.")
    return offsets


def score_sequences(
    package: ModelPackage | str | os.PathLike | SequenceScorer,
    frames: np.ndarray,
    offsets: np.ndarray,
    times: np.ndarray | None = None,
    *,
    channels: Sequence[str] | None = None,
    normalized: bool = False,
    device: str = "cpu",
    precision: str = "auto",
    visit_scores: np.ndarray | None = None,
) -> np.ndarray:
    """Score objects from their frame sequences with a sequence model package.

    Parameters
    ----------
    package : `ModelPackage`, path, or `SequenceScorer`
        The model (a scorer is reused as is; a package is loaded once per call).
    frames, offsets, times, channels, normalized, visit_scores
        As in `SequenceScorer.score`.
    device : `str`
        Torch device when a scorer is built here.
    precision : `str`
        Encoder precision when a scorer is built here (see `SequenceScorer`).

    Returns
    -------
    reliability : `numpy.ndarray`
        ``(n_objects,)`` float32 calibrated ``P(real)``; NaN for objects without frames.
    """
    scorer = (
        package
        if isinstance(package, SequenceScorer)
        else SequenceScorer(package, device=device, precision=precision)
    )
    return scorer.score(
        frames, offsets, times, channels=channels, normalized=normalized, visit_scores=visit_scores
    )


def load_sequence_scorer(
    package: ModelPackage, device: str = "auto", chunk_frames: int = 65536
) -> SequenceScorer:
    """The `SequenceScorer` of a package, loaded once per process (device, chunk size).

    It lives in the same process-wide cache as the triplet scorers
    (`lsst.meas.rbnet.scoring.cached_model`), keyed by the package's digest and metadata.
    """
    dev = select_device(device)
    key = ("sequence", package_key(package), str(dev), int(chunk_frames))
    return cached_model(key, lambda: SequenceScorer(package, device=str(dev), chunk_frames=chunk_frames))
