# This file is part of meas_rbnet.
"""A classical baseline reported beside the CNN: L2-regularised logistic regression.

Its inputs are the same prepared stamps the CNN sees (so the comparison measures
the network, not the preprocessing): every normalised pixel, plus a few
hand-made features per channel that a human scanner would look at (the central
pixel, the mean of the central 3x3 and 5x5 boxes, their extrema, the contrast
of the centre against its 8 neighbours, which separates PSF-wide sources from
single-pixel cosmic rays and hot pixels, and the spread of the whole stamp).

Fitted by full-batch L-BFGS in torch on standardised features; no scikit-learn.
"""

__all__ = ["HAND_FEATURES", "L2_GRID", "hand_features", "LogisticBaseline"]

import numpy as np
import torch

#: Names of the per-channel hand features, in the order of `hand_features`.
HAND_FEATURES: tuple[str, ...] = (
    "center",
    "mean3x3",
    "mean5x5",
    "max5x5",
    "min5x5",
    "center_minus_ring",
    "std",
)


#: Penalties tried by ``LogisticBaseline(l2="auto")``.
L2_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def hand_features(x: np.ndarray) -> np.ndarray:
    """Hand-made features of prepared stamps.

    Parameters
    ----------
    x : `numpy.ndarray`, shape ``(N, C, S, S)``
        Prepared (normalised) stamps, ``S >= 5``.

    Returns
    -------
    features : `numpy.ndarray`, shape ``(N, C * len(HAND_FEATURES))``, float32
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[-1] != x.shape[-2] or x.shape[-1] < 5:
        raise ValueError(f"expected (N, C, S, S) stamps with S >= 5, got shape {x.shape}.")
    c = x.shape[-1] // 2
    b3 = x[:, :, c - 1 : c + 2, c - 1 : c + 2]
    b5 = x[:, :, c - 2 : c + 3, c - 2 : c + 3]
    centre = x[:, :, c, c]
    ring = (b3.sum(axis=(2, 3)) - centre) / 8.0
    feats = [
        centre,
        b3.mean(axis=(2, 3)),
        b5.mean(axis=(2, 3)),
        b5.max(axis=(2, 3)),
        b5.min(axis=(2, 3)),
        centre - ring,
        x.std(axis=(2, 3)),
    ]
    return np.stack(feats, axis=2).reshape(len(x), -1).astype(np.float32)


class LogisticBaseline:
    """Logistic regression on normalised pixels and hand features.

    Parameters
    ----------
    l2 : `float` or ``"auto"``
        L2 penalty on the weights (on standardised features; the intercept is
        free). ``"auto"`` picks the value of `L2_GRID` with the lowest log-loss
        on a held-out fifth of the fitting set, then refits on all of it.
    use_pixels : `bool`
        Include every pixel of every channel as a feature.
    use_features : `bool`
        Include `hand_features`.
    max_iter : `int`
        L-BFGS iterations.
    max_samples : `int`
        Fit on at most this many stamps (a random, label-stratified subset), which
        bounds memory: the design matrix is ``max_samples x (C S^2 + 7 C)`` float32.
    seed : `int`
        Seed of the subset choice.
    """

    def __init__(
        self,
        l2: float | str = "auto",
        use_pixels: bool = True,
        use_features: bool = True,
        max_iter: int = 200,
        max_samples: int = 40000,
        seed: int = 0,
    ):
        if not (use_pixels or use_features):
            raise ValueError("LogisticBaseline needs pixels, hand features or both.")
        if l2 != "auto" and (isinstance(l2, str) or l2 < 0):
            raise ValueError(f"l2 must be 'auto' or a number >= 0, got {l2!r}.")
        self.l2 = l2 if l2 == "auto" else float(l2)
        self.l2_: float | None = None
        self.use_pixels = use_pixels
        self.use_features = use_features
        self.max_iter = int(max_iter)
        self.max_samples = int(max_samples)
        self.seed = int(seed)
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.coef_: np.ndarray | None = None
        self.intercept_: float = 0.0

    def _design(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        parts = []
        if self.use_pixels:
            parts.append(x.reshape(len(x), -1))
        if self.use_features:
            parts.append(hand_features(x))
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def fit(self, x: np.ndarray, labels) -> "LogisticBaseline":
        """Fit on prepared stamps ``x`` ``(N, C, S, S)`` and labels ``(N,)`` (0/1)."""
        y = np.asarray(labels).astype(np.float32)
        if y.shape != (len(x),):
            raise ValueError(f"labels has shape {y.shape}; expected ({len(x)},).")
        if y.min() == y.max():
            raise ValueError("the baseline needs both real and bogus examples.")
        rng = np.random.default_rng(self.seed)
        if len(x) > self.max_samples:
            idx = np.sort(rng.choice(len(x), self.max_samples, replace=False))
            x, y = x[idx], y[idx]
        a = self._design(x)
        self.mean_ = a.mean(axis=0)
        self.scale_ = a.std(axis=0)
        # Constant features (e.g. a filled border) carry nothing; avoid dividing by zero.
        self.scale_[self.scale_ < 1e-6] = 1.0
        a = (a - self.mean_) / self.scale_
        if self.l2 == "auto":
            held = rng.random(len(y)) < 0.2
            if held.all() or not held.any() or y[held].min() == y[held].max():
                self.l2_ = L2_GRID[len(L2_GRID) // 2]
            else:
                losses = []
                for l2 in L2_GRID:
                    w, b = self._solve(a[~held], y[~held], l2)
                    z = a[held] @ w + b
                    losses.append(float(np.mean(np.logaddexp(0, z) - y[held] * z)))
                self.l2_ = L2_GRID[int(np.argmin(losses))]
        else:
            self.l2_ = self.l2
        self.coef_, self.intercept_ = self._solve(a, y, self.l2_)
        return self

    def _solve(self, a: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
        """Penalised maximum likelihood by full-batch L-BFGS; returns (weights, intercept)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            at = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
            yt = torch.from_numpy(y)
            w = torch.zeros(a.shape[1], requires_grad=True)
            prior = float(np.log(y.mean() / (1 - y.mean())))
            b = torch.tensor(prior, requires_grad=True)
            opt = torch.optim.LBFGS(
                [w, b], lr=1.0, max_iter=self.max_iter, history_size=20, line_search_fn="strong_wolfe"
            )

            def closure():
                opt.zero_grad()
                z = at @ w + b
                loss = torch.nn.functional.binary_cross_entropy_with_logits(z, yt) + 0.5 * l2 * (w @ w)
                loss.backward()
                return loss

            opt.step(closure)
        return w.detach().numpy().astype(np.float32), float(b.detach())

    def decision_function(self, x: np.ndarray, chunk_size: int = 8192) -> np.ndarray:
        """Logits ``(N,)`` float64 of prepared stamps ``x`` ``(N, C, S, S)``."""
        if self.coef_ is None:
            raise RuntimeError("LogisticBaseline is not fitted; call fit() first.")
        out = np.empty(len(x), dtype=np.float64)
        for start in range(0, len(x), chunk_size):
            a = (self._design(x[start : start + chunk_size]) - self.mean_) / self.scale_
            out[start : start + len(a)] = a @ self.coef_ + self.intercept_
        return out

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probabilities of being real ``(N,)`` float64."""
        z = self.decision_function(x)
        return 0.5 * (1.0 + np.tanh(0.5 * z))
