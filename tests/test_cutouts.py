# This file is part of meas_rbnet.
"""Tests of lsst.meas.rbnet.cutouts against a naive per-source reference."""

import math

import numpy as np
import pytest

from lsst.meas.rbnet.constants import DEFAULT_BAD_MASK_PLANES, MASK_PLANES, mask_bits
from lsst.meas.rbnet.contract import InputContract
from lsst.meas.rbnet.cutouts import (
    CutoutBatch,
    extract_cutouts,
    iter_cutout_batches,
    normalize_stamps,
    prepare_cutouts,
    prepare_stamps,
    resize_stamps,
    stats_pixel_grid,
)
from lsst.meas.rbnet.flags import UNSCORABLE, SourceFlag

BITS = mask_bits(DEFAULT_BAD_MASK_PLANES)
F = SourceFlag


def naive_cutouts(images, masks, x, y, size, bits=BITS, max_bad_fraction=0.5):
    """One source at a time, by slicing: the obvious implementation, used as the reference."""
    n, n_chan = len(x), len(images)
    H, W = images[0].shape
    half = size // 2
    stamps = np.full((n, n_chan, size, size), np.nan, dtype=np.float32)
    flags = np.zeros(n, dtype=np.int32)
    n_bad = np.zeros((n, n_chan), dtype=np.int32)
    for i in range(n):
        if not (math.isfinite(x[i]) and math.isfinite(y[i])):
            n_bad[i] = size * size
            flags[i] = F.BAD_CENTROID | F.NO_VALID_PIXELS | F.MOSTLY_BAD | F.BAD_CENTER | F.NOT_SCORED
            continue
        cx, cy = math.floor(x[i] + 0.5), math.floor(y[i] + 0.5)
        r0, c0 = cy - half, cx - half
        ra, rb = max(r0, 0), min(r0 + size, H)
        ca, cb = max(c0, 0), min(c0 + size, W)
        f = 0
        if ra != r0 or rb != r0 + size or ca != c0 or cb != c0 + size:
            f |= F.EDGE
        if not (-0.5 <= x[i] < W - 0.5 and -0.5 <= y[i] < H - 0.5):
            f |= F.OFF_IMAGE
        for c in range(n_chan):
            bad = np.ones((size, size), dtype=bool)
            if ra < rb and ca < cb:
                pix = images[c][ra:rb, ca:cb].astype(np.float32)
                pbad = ~np.isfinite(pix)
                if pbad.any():
                    f |= F.NONFINITE
                if masks is not None and masks[c] is not None:
                    mbad = (masks[c][ra:rb, ca:cb] & bits) != 0
                    if mbad.any():
                        f |= F.MASKED
                    pbad |= mbad
                pix = np.where(pbad, np.nan, pix)
                stamps[i, c, ra - r0 : rb - r0, ca - c0 : cb - c0] = pix
                bad[ra - r0 : rb - r0, ca - c0 : cb - c0] = pbad
            n_bad[i, c] = bad.sum()
            if bad[half, half]:
                f |= F.BAD_CENTER
            if bad.sum() > max_bad_fraction * size * size:
                f |= F.MOSTLY_BAD
            if bad.all():
                f |= F.NO_VALID_PIXELS
        if f & UNSCORABLE:
            f |= F.NOT_SCORED
        flags[i] = f
    return stamps, flags, n_bad


def make_images(rng, shape=(60, 80), n_chan=3, dtype=np.float32):
    images = [rng.normal(10.0, 3.0, size=shape).astype(dtype) for _ in range(n_chan)]
    masks = []
    for c, img in enumerate(images):
        bad = rng.random(shape) < 0.01
        img[bad] = np.nan
        img[rng.random(shape) < 0.003] = np.inf
        m = np.zeros(shape, dtype=np.int32)
        m[rng.random(shape) < 0.01] = 1 << MASK_PLANES["SAT"]
        # DETECTED is not a bad plane: it must not make pixels untrusted.
        m[rng.random(shape) < 0.05] |= 1 << MASK_PLANES["DETECTED"]
        m[:, 7 + c] |= 1 << MASK_PLANES["BAD"]  # a bad column
        masks.append(m)
    masks[2] = None  # a channel without mask
    return images, masks


@pytest.mark.parametrize("size", [3, 4, 8, 21, 31])
def test_matches_naive_reference(size):
    rng = np.random.default_rng(size)
    images, masks = make_images(rng)
    H, W = images[0].shape
    n = 300
    x = rng.uniform(-size, W + size, n)
    y = rng.uniform(-size, H + size, n)
    x[:20] = np.round(x[:20]) + 0.5  # exact half pixels
    y[20:40] = np.round(y[20:40]) - 0.5
    x[40], y[41] = np.nan, np.inf
    batch = extract_cutouts(images, x, y, size, masks=masks)
    stamps, flags, n_bad = naive_cutouts(images, masks, x, y, size)
    assert isinstance(batch, CutoutBatch)
    assert batch.stamps.dtype == np.float32 and batch.stamps.shape == (n, 3, size, size)
    np.testing.assert_array_equal(batch.stamps, stamps)  # NaN positions must agree too
    np.testing.assert_array_equal(batch.n_bad, n_bad)
    assert batch.flags.dtype == np.int32
    np.testing.assert_array_equal(batch.flags, flags)
    # Every case must actually occur in this test.
    for bit in (F.EDGE, F.NONFINITE, F.MASKED, F.BAD_CENTER, F.OFF_IMAGE, F.BAD_CENTROID, F.NO_VALID_PIXELS):
        assert (flags & bit).any(), bit


def test_float64_and_integer_images():
    rng = np.random.default_rng(3)
    img64 = rng.normal(size=(40, 50))
    img_int = rng.integers(-1000, 1000, size=(40, 50)).astype(np.int16)
    x, y = rng.uniform(0, 50, 50), rng.uniform(0, 40, 50)
    batch = extract_cutouts([img64, img_int], x, y, 7)
    ref, _, _ = naive_cutouts([img64, img_int], None, x, y, 7)
    assert batch.stamps.dtype == np.float32
    np.testing.assert_array_equal(batch.stamps, ref)


def test_center_rounding_and_offsets():
    img = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)  # value = 30 * row + col
    x = np.array([10.0, 10.49, 10.5, 10.51, 9.5, -0.5, 12.3])
    y = np.array([5.0, 5.0, 5.5, 4.5, 5.49, 5.0, 7.7])
    batch = extract_cutouts([img], x, y, 5)
    cx = np.array([10, 10, 11, 11, 10, 0, 12])
    cy = np.array([5, 5, 6, 5, 5, 5, 8])
    np.testing.assert_array_equal(batch.centers, np.stack([cx, cy], axis=1))
    np.testing.assert_allclose(batch.offsets[:, 0], x - cx, atol=1e-6)
    np.testing.assert_allclose(batch.offsets[:, 1], y - cy, atol=1e-6)
    assert np.all((batch.offsets >= -0.5) & (batch.offsets < 0.5))
    np.testing.assert_array_equal(batch.stamps[:, 0, 2, 2], 30 * cy + cx)
    # x = -0.5 is on the image (pixel 0 covers [-0.5, 0.5)), but its stamp reaches past the edge.
    assert batch.flags[5] & F.EDGE and not batch.flags[5] & F.OFF_IMAGE


@pytest.mark.parametrize("size", [4, 30])
def test_even_size_centre_index(size):
    img = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    batch = extract_cutouts([img], [31.2], [33.0], size)
    half = size // 2
    st = batch.stamps[0, 0]
    assert st[half, half] == img[33, 31]
    # Rows cy - S//2 .. cy + S//2 - 1: one more pixel below/left of the centre than above/right.
    np.testing.assert_array_equal(st, img[33 - half : 33 - half + size, 31 - half : 31 - half + size])


def test_flags_each_case():
    H, W = 50, 60
    diff = np.zeros((H, W), dtype=np.float32)
    sci = np.ones((H, W), dtype=np.float32)
    tmpl = np.full((H, W), 2.0, dtype=np.float32)
    mask = np.zeros((H, W), dtype=np.int32)
    sci[10, 12] = np.nan  # NaN near source 1 (not the centre)
    mask[30, 30] = 1 << MASK_PLANES["CR"]  # masked centre of source 3
    mask[30, 40] = 1 << MASK_PLANES["DETECTED"]  # harmless plane at source 4
    tmpl[:, 45:] = np.nan  # template has no data over the right part
    x = np.array([1.0, 13.0, 30.0, 30.0, 40.0, 52.0, 75.0, np.nan, 20.0])
    y = np.array([25.0, 10.0, 20.0, 30.0, 30.0, 25.0, 25.0, 5.0, -0.6])
    batch = extract_cutouts([diff, sci, tmpl], x, y, 7, masks=[mask, None, None])
    f = batch.flags
    assert f[0] == F.EDGE  # stamp reaches past the left edge; centre fine
    assert f[1] == F.NONFINITE
    assert f[2] == 0
    assert f[3] == F.MASKED | F.BAD_CENTER
    assert f[4] == 0
    assert f[5] == F.NONFINITE | F.BAD_CENTER | F.MOSTLY_BAD | F.NO_VALID_PIXELS | F.NOT_SCORED
    assert f[6] & F.OFF_IMAGE and f[6] & F.EDGE and f[6] & F.NOT_SCORED and f[6] & F.NO_VALID_PIXELS
    assert f[7] & F.BAD_CENTROID and f[7] & F.NOT_SCORED and np.isnan(batch.stamps[7]).all()
    assert f[8] & F.OFF_IMAGE and f[8] & F.EDGE and f[8] & F.NOT_SCORED
    np.testing.assert_array_equal(batch.n_bad[5], [0, 0, 49])
    np.testing.assert_array_equal(batch.n_bad[0], [14, 14, 14])  # two columns off the image
    np.testing.assert_array_equal(batch.centers[7], [0, 0])
    # Off-image pixels are NaN, never zero.
    assert np.isnan(batch.stamps[0, :, :, :2]).all() and np.isfinite(batch.stamps[0, :, :, 2:]).all()


def test_mask_bits_option():
    img = np.zeros((20, 20), dtype=np.float32)
    mask = np.zeros((20, 20), dtype=np.int32)
    mask[10, 10] = 1 << MASK_PLANES["DETECTED"]
    b = extract_cutouts([img], [10.0], [10.0], 5, masks=[mask], bad_mask_bits=mask_bits(["DETECTED"]))
    assert b.flags[0] == F.MASKED | F.BAD_CENTER and b.n_bad[0, 0] == 1
    b = extract_cutouts([img], [10.0], [10.0], 5, masks=[mask], bad_mask_bits=0)
    assert b.flags[0] == 0


def test_mostly_bad_threshold():
    img = np.zeros((20, 20), dtype=np.float32)
    img[:, 11:] = np.nan  # 2 of 5 columns of the stamp at x=10 are bad: 40%
    assert extract_cutouts([img], [10.0], [10.0], 5).flags[0] == F.NONFINITE
    flags = extract_cutouts([img], [10.0], [10.0], 5, max_bad_fraction=0.3).flags
    assert flags[0] == F.NONFINITE | F.MOSTLY_BAD


def test_stamp_larger_than_image():
    rng = np.random.default_rng(5)
    img = rng.normal(size=(6, 9)).astype(np.float32)
    x, y = np.array([4.0, 0.0, 8.4]), np.array([3.0, 0.0, 5.2])
    batch = extract_cutouts([img], x, y, 11)
    ref, flags, n_bad = naive_cutouts([img], None, x, y, 11)
    np.testing.assert_array_equal(batch.stamps, ref)
    np.testing.assert_array_equal(batch.flags, flags)
    np.testing.assert_array_equal(batch.n_bad, n_bad)


def test_layouts_dtypes_and_out():
    """Non-contiguous, read-only and non-float32 inputs take other code paths; results must not change."""
    rng = np.random.default_rng(21)
    images, masks = make_images(rng, shape=(64, 70))
    n = 200
    x, y = rng.uniform(-4, 74, n), rng.uniform(-4, 68, n)
    ref = extract_cutouts(images, x, y, 9, masks=masks)
    fortran = [np.asfortranarray(im) for im in images]
    strided = [np.repeat(im, 2, axis=1)[:, ::2] for im in images]
    readonly = [im.copy() for im in images]
    for im in readonly:
        im.flags.writeable = False
    big_endian = [im.astype(">f8") for im in images]
    masks16 = [None if m is None else m.astype(np.uint16) for m in masks]
    for imgs, msk in ((fortran, masks), (strided, masks), (readonly, masks), (big_endian, masks16)):
        b = extract_cutouts(imgs, x, y, 9, masks=msk)
        np.testing.assert_array_equal(b.stamps, ref.stamps)
        np.testing.assert_array_equal(b.flags, ref.flags)
        np.testing.assert_array_equal(b.n_bad, ref.n_bad)
    out = np.full((n, 3, 9, 9), 7.0, dtype=np.float32)
    b = extract_cutouts(images, x, y, 9, masks=masks, out=out)
    assert b.stamps is out
    np.testing.assert_array_equal(out, ref.stamps)
    with pytest.raises(ValueError, match="out must be"):
        extract_cutouts(images, x, y, 9, masks=masks, out=out[:, :2])


def test_sorted_inside_sources_and_input_order():
    """Sources already in raster order (slice writes) and shuffled give the same stamps."""
    rng = np.random.default_rng(22)
    images, masks = make_images(rng, shape=(80, 90))
    yy, xx = np.meshgrid(np.arange(10, 70, 7.3), np.arange(10, 80, 6.1), indexing="ij")
    x, y = xx.ravel(), yy.ravel()
    b = extract_cutouts(images, x, y, 15, masks=masks)
    ref, flags, n_bad = naive_cutouts(images, masks, x, y, 15)
    np.testing.assert_array_equal(b.stamps, ref)
    np.testing.assert_array_equal(b.flags, flags)
    perm = rng.permutation(len(x))
    bp = extract_cutouts(images, x[perm], y[perm], 15, masks=masks)
    np.testing.assert_array_equal(bp.stamps, ref[perm])


def test_mask_sign_bit_and_absurd_centroids():
    img = np.zeros((20, 20), dtype=np.float32)
    mask = np.zeros((20, 20), dtype=np.int32)
    mask[10, 10] = np.int32(-(2**31))  # bit 31 of an int32 mask
    b = extract_cutouts([img], [10.0], [10.0], 5, masks=[mask], bad_mask_bits=1 << 31)
    assert b.flags[0] == F.MASKED | F.BAD_CENTER
    b = extract_cutouts([img], [1e30, -1e300, 10.0], [10.0, 10.0, 1e20], 5)
    assert np.all(b.flags & F.OFF_IMAGE) and np.all(b.flags & F.NOT_SCORED)
    assert np.isnan(b.stamps).all() and np.all(b.n_bad == 25)


def test_empty_image_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        extract_cutouts([np.zeros((0, 10), np.float32)], [1.0], [1.0], 5)


def test_empty_input():
    img = np.zeros((30, 30), dtype=np.float32)
    b = extract_cutouts([img, img], np.array([]), np.array([]), 9)
    assert b.stamps.shape == (0, 2, 9, 9) and b.stamps.dtype == np.float32
    assert b.flags.shape == (0,) and b.flags.dtype == np.int32
    assert b.n_bad.shape == (0, 2) and b.centers.shape == (0, 2) and b.centers.dtype == np.int64
    assert b.offsets.shape == (0, 2) and b.offsets.dtype == np.float32
    c = InputContract(stamp_size=21)
    x, f = prepare_cutouts([img, img, img], [], [], c)
    assert x.shape == (0, 3, 21, 21) and f.shape == (0,)
    assert list(iter_cutout_batches([img, img, img], [], [], c, 10)) == []


def test_errors():
    img = np.zeros((30, 30), dtype=np.float32)
    with pytest.raises(ValueError, match="science image must be a 2-d"):
        extract_cutouts([img, np.zeros((2, 30, 30)), img], [1.0], [1.0], 5)
    with pytest.raises(ValueError, match="template image has shape"):
        extract_cutouts([img, img, np.zeros((30, 31))], [1.0], [1.0], 5)
    with pytest.raises(ValueError, match="visit image has shape"):
        extract_cutouts([img, np.zeros((3, 3))], [1.0], [1.0], 5, names=("coadd", "visit"))
    with pytest.raises(ValueError, match="same length"):
        extract_cutouts([img], [1.0, 2.0], [1.0], 5)
    with pytest.raises(ValueError, match=">= 3"):
        extract_cutouts([img], [1.0], [1.0], 2)
    with pytest.raises(ValueError, match="integer dtype"):
        extract_cutouts([img], [1.0], [1.0], 5, masks=[img])
    with pytest.raises(ValueError, match="max_bad_fraction"):
        extract_cutouts([img], [1.0], [1.0], 5, max_bad_fraction=1.5)
    with pytest.raises(ValueError, match="mask has shape"):
        extract_cutouts([img], [1.0], [1.0], 5, masks=[np.zeros((3, 3), np.int32)])


def test_resize_round_trip():
    rng = np.random.default_rng(7)
    st = rng.normal(size=(4, 3, 31, 31)).astype(np.float32)
    big, resized = resize_stamps(st, 41)
    assert resized and big.shape == (4, 3, 41, 41)
    assert np.isnan(big[..., :5, :]).all() and np.isnan(big[..., :, -5:]).all()
    back, resized = resize_stamps(big, 31)
    assert resized
    np.testing.assert_array_equal(back, st)
    same, resized = resize_stamps(st, 31)
    assert not resized and same is st


@pytest.mark.parametrize("n_in,n_out", [(30, 31), (63, 31), (31, 30), (64, 21), (21, 64)])
def test_resize_keeps_centre_pixel(n_in, n_out):
    st = np.arange(2 * n_in * n_in, dtype=np.float32).reshape(2, n_in, n_in)  # 3-d input
    out, resized = resize_stamps(st, n_out)
    assert resized and out.shape == (2, n_out, n_out)
    np.testing.assert_array_equal(out[:, n_out // 2, n_out // 2], st[:, n_in // 2, n_in // 2])
    # Equivalent to extracting at the new size directly.
    img = np.arange(100 * 100, dtype=np.float32).reshape(100, 100)
    a = extract_cutouts([img], [50.3], [49.6], n_in).stamps
    b = extract_cutouts([img], [50.3], [49.6], n_out).stamps
    ra, _ = resize_stamps(a, n_out)
    if n_out <= n_in:
        np.testing.assert_array_equal(ra, b)
    else:
        pad = np.isnan(ra)
        np.testing.assert_array_equal(ra[~pad], b[~pad])
        assert pad.sum() == n_out * n_out - n_in * n_in


def _stamps(rng, n=6, c=2, s=31):
    st = rng.normal(5.0, 2.0, size=(n, c, s, s)).astype(np.float32)
    st[:, :, s // 2, s // 2] += 50.0  # a source
    st[0, 0, :3, :] = np.nan
    return st


@pytest.mark.parametrize("norm", ["robust_asinh", "robust", "unit"])
def test_normalisation_invariances(norm):
    rng = np.random.default_rng(11)
    st = _stamps(rng)
    base = normalize_stamps(st, norm)
    scaled = normalize_stamps(st * np.float32(7.5), norm)
    np.testing.assert_allclose(scaled, base, atol=2e-5, rtol=1e-5)
    if norm != "unit":
        shifted = normalize_stamps(st + np.float32(1000.0), norm)
        np.testing.assert_allclose(shifted, base, atol=2e-3)
    assert np.isfinite(base).all() and base.dtype == np.float32
    assert (base[0, 0, :3] == 0.0).all()  # NaN filled with fill_value 0


def test_normalisation_values_against_nanmedian():
    rng = np.random.default_rng(12)
    for s in (21, 30, 31, 51, 52, 101):
        st = _stamps(rng, n=3, c=1, s=s)
        st[1, 0, 5:9, 2:20] = np.nan
        out = normalize_stamps(st, "robust")
        gr, gc = stats_pixel_grid(s)
        for i in range(3):
            grid = st[i, 0][gr, gc].astype(np.float64)
            med = np.nanmedian(grid)
            sigma = 1.4826 * np.nanmedian(np.abs(grid - med))
            ref = np.where(np.isnan(st[i, 0]), 0.0, (st[i, 0] - med) / sigma)
            np.testing.assert_allclose(out[i, 0], ref, rtol=1e-4, atol=1e-4)


def test_stats_grid_is_used_and_documented():
    assert stats_pixel_grid(31) == (slice(0, None, 1), slice(0, None, 1))
    gr, _ = stats_pixel_grid(51)
    idx = np.arange(51)[gr]
    assert 25 in idx and np.all(np.diff(idx) == 2) and len(idx) <= 32
    assert len(np.arange(101)[stats_pixel_grid(101)[0]]) <= 32
    # Pixels off the grid do not move the median: grid pixels 0, others 100.
    st = np.full((1, 1, 51, 51), 100.0, dtype=np.float32)
    st[0, 0][stats_pixel_grid(51)] = 0.0
    out = normalize_stamps(st, "robust")
    assert out[0, 0, 25, 25] == 0.0


def test_normalisation_degenerate_stamps():
    st = np.zeros((4, 1, 21, 21), dtype=np.float32)
    st[0] = 3.0  # constant
    st[1] = np.nan  # all bad
    st[2] = 1.0
    st[2, 0, 10, 10] = 1e6  # MAD 0, one bright pixel: std floor
    st[3, 0, :, :] = np.nan
    st[3, 0, 4, 4] = np.inf  # only a non-finite value
    for norm in ("robust_asinh", "robust", "unit", "none"):
        out = normalize_stamps(st.copy(), norm)
        assert np.isfinite(out).all(), norm
    out = normalize_stamps(st, "robust")
    assert (out[0] == 0).all() and (out[1] == 0).all() and (out[3] == 0).all()
    assert out[2, 0, 10, 10] > 10 and np.all(np.delete(out[2, 0].ravel(), 10 * 21 + 10) == 0)
    # fill_value travels in the contract.
    c = InputContract(stamp_size=21, channels=("difference",), fill_value=-2.0)
    assert (normalize_stamps(st, c)[1] == -2.0).all()
    # In place.
    buf = st.copy()
    assert normalize_stamps(buf, "robust", out=buf) is buf


# ----------------------------------------------------------------------
# Golden values of the default normalisation, derived by hand from the formula in
# `normalize_stamps` / `contract.NORMALIZATIONS`:
#     y = asinh((x - median) / (a * 1.4826 * MAD)), untrusted pixels -> fill_value,
#     MAD == 0 -> population std of the finite pixels, then 1.
# Each stamp's pixel values are chosen so that the median and MAD are known exactly.
# ----------------------------------------------------------------------


def _ramp(n_values, size=21, seed=0):
    """A size x size stamp holding the values 0 .. n_values - 1 (then NaN) in a shuffled order."""
    values = np.full(size * size, np.nan, dtype=np.float32)
    values[:n_values] = np.arange(n_values, dtype=np.float32)
    return np.random.default_rng(seed).permutation(values).reshape(size, size)


def _golden_contract(softening, fill):
    return InputContract(stamp_size=21, channels=("difference",), asinh_softening=softening, fill_value=fill)


def _shipped_contract():
    from lsst.meas.rbnet.package import ModelPackage
    from lsst.meas.rbnet.scoring import default_model_path

    return ModelPackage.load(default_model_path()).contract


@pytest.mark.parametrize("which", ["default", "other", "shipped"])
def test_robust_asinh_golden_values(which):
    source = {"default": InputContract(), "other": _golden_contract(1.5, -4.0)}
    source["shipped"] = _shipped_contract() if which == "shipped" else None
    assert source[which].normalization == "robust_asinh"
    softening, fill = source[which].asinh_softening, source[which].fill_value
    c = _golden_contract(softening, fill)
    stamps = []
    # 0. The values 0..440: median 220; |x - 220| is 0, 1, 1, 2, 2, ..., 220, 220, whose
    #    middle (221st) value is 110.
    stamps.append(_ramp(441, seed=1))
    # 1. NaN: the values 0..399 and 41 NaN: median (199 + 200) / 2 = 199.5; |x - 199.5| is
    #    0.5, 0.5, 1.5, 1.5, ..., 199.5, 199.5, whose middle two (200th, 201st) are 99.5 and 100.5: MAD 100.
    stamps.append(_ramp(400, seed=2))
    # 2. Constant: median 7, MAD 0, std 0 -> sigma 1; every pixel 0.
    stamps.append(np.full((21, 21), 7.0, np.float32))
    # 3. Saturated: 300 pixels at the saturation level 65535 and 141 at 0..140: median 65535,
    #    MAD 0, so sigma is the population std of all 441 pixels; one more pixel is +inf (untrusted).
    sat = np.full(441, 65535.0, np.float32)
    sat[:141] = np.arange(141)
    sat = np.random.default_rng(3).permutation(sat).reshape(21, 21)
    inf_at = tuple(np.argwhere(sat == 65535.0)[0])
    sat[inf_at] = np.inf
    stamps.append(sat)
    # 4. Every pixel NaN: all fill.
    stamps.append(np.full((21, 21), np.nan, np.float32))
    st = np.stack(stamps)[:, None]

    out = normalize_stamps(st.copy(), c)

    def expect(x, median, sigma):
        y = np.arcsinh((x.astype(np.float64) - median) / (softening * sigma))
        return np.where(np.isfinite(x), y, fill)

    np.testing.assert_allclose(out[0, 0], expect(st[0, 0], 220.0, 1.4826 * 110.0), rtol=1e-5, atol=1e-6)
    # A hand-checked pixel: the maximum, 440, maps to asinh(220 / (a * 1.4826 * 110)).
    top = math.asinh(220.0 / (softening * 163.086))
    assert out[0, 0][st[0, 0] == 440.0][0] == pytest.approx(top, rel=1e-5)
    np.testing.assert_allclose(out[1, 0], expect(st[1, 0], 199.5, 1.4826 * 100.0), rtol=1e-5, atol=1e-6)
    assert np.all(out[1, 0][np.isnan(st[1, 0])] == fill) and np.count_nonzero(out[1, 0] == fill) >= 41
    np.testing.assert_array_equal(out[2, 0], np.zeros((21, 21), np.float32))
    # Population std of 440 finite pixels: 299 at 65535 and 0..140 (the +inf pixel is not counted).
    finite = np.concatenate([np.full(299, 65535.0), np.arange(141.0)])
    sigma_sat = math.sqrt(np.mean((finite - finite.mean()) ** 2))
    np.testing.assert_allclose(out[3, 0], expect(st[3, 0], 65535.0, sigma_sat), rtol=1e-5, atol=1e-5)
    assert out[3, 0][inf_at] == fill
    bottom = math.asinh(-65535.0 / (softening * sigma_sat))
    assert out[3, 0][st[3, 0] == 0.0][0] == pytest.approx(bottom, rel=1e-5)
    np.testing.assert_array_equal(out[4, 0], np.full((21, 21), fill, np.float32))
    # The scorer's path (prepare_stamps) gives the same numbers.
    prepared, _ = prepare_stamps(st, c)
    np.testing.assert_array_equal(prepared, out)


def test_robust_asinh_golden_values_on_the_stats_grid():
    """Above 32 pixels the statistics come from the documented sub-grid (every 2nd pixel for 41x41,
    through the centre pixel 20): grid pixels hold 0..440, off-grid pixels 1e6, which must not count."""
    st = np.full((41, 41), 1e6, np.float32)
    gr, gc = stats_pixel_grid(41)
    assert gr == slice(0, None, 2) and gc == slice(0, None, 2)
    st[gr, gc] = _ramp(441, seed=4)
    out = normalize_stamps(st[None, None].copy(), "robust_asinh")  # softening 3, fill 0
    expected = np.arcsinh((st.astype(np.float64) - 220.0) / (3.0 * 1.4826 * 110.0))
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-5, atol=1e-6)


def test_default_contract_is_the_documented_robust_asinh():
    from lsst.meas.rbnet.contract import NORMALIZATIONS

    assert InputContract().normalization == "robust_asinh" == NORMALIZATIONS[0]
    assert InputContract().asinh_softening == 3.0 and InputContract().fill_value == 0.0
    # A normalisation given by name uses softening 3 and fill 0, as documented.
    st = _ramp(441, seed=5)[None, None]
    by_name = normalize_stamps(st, "robust_asinh")
    np.testing.assert_array_equal(by_name, normalize_stamps(st, InputContract(21)))


def test_prepare_stamps_selection_and_flags():
    rng = np.random.default_rng(13)
    st = _stamps(rng, n=5, c=3, s=31)
    st[3, 2] = np.nan  # template all bad
    flags_in = np.zeros(5, dtype=np.int64)
    flags_in[1] = F.EDGE
    full = InputContract(stamp_size=31)
    x, f = prepare_stamps(st, full, flags_in)
    assert x.shape == (5, 3, 31, 31) and x.dtype == np.float32 and x.flags.c_contiguous
    # An all-NaN channel sets the bits extraction sets for the same pixels (tests/test_hardening.py).
    all_bad = F.NONFINITE | F.BAD_CENTER | F.MOSTLY_BAD | F.NO_VALID_PIXELS | F.NOT_SCORED
    assert f.dtype == np.int32 and f[1] == F.EDGE and f[3] == all_bad
    assert np.isfinite(x).all() and flags_in[3] == 0  # input not modified
    diff = InputContract(stamp_size=31, channels=("difference",))
    xd, fd = prepare_stamps(st, diff)
    np.testing.assert_array_equal(xd, x[:, :1])
    assert fd[3] == 0  # template not used
    xd2, _ = prepare_stamps(st[:, 0], diff)  # (N, H, W) for a one-channel contract
    np.testing.assert_array_equal(xd2, xd)
    xd3, _ = prepare_stamps(st[:, :1], diff)  # already only the contract's channels
    np.testing.assert_array_equal(xd3, xd)
    st_t = InputContract(stamp_size=31, channels=("template", "difference"))
    xt, _ = prepare_stamps(st, st_t)
    np.testing.assert_array_equal(xt, x[:, [2, 0]])


def test_prepare_stamps_sizes():
    rng = np.random.default_rng(14)
    c = InputContract(stamp_size=31)
    with pytest.raises(ValueError, match=r"accepted range \[21, 101\]"):
        prepare_stamps(rng.normal(size=(2, 3, 20, 20)), c)
    with pytest.raises(ValueError, match=r"expected \(N, C, H, W\) stamps"):
        prepare_stamps(rng.normal(size=(3, 31, 31)), c)
    with pytest.raises(ValueError, match="channels"):
        prepare_stamps(rng.normal(size=(2, 2, 31, 31)), c)
    for s in (21, 101, 31):
        x, f = prepare_stamps(rng.normal(size=(2, 3, s, s)), c)
        assert x.shape == (2, 3, 31, 31) and np.isfinite(x).all()
        assert bool(f[0] & F.RESIZED) == (s != 31)
    # A stamp padded to the model size equals extracting at that size and NaN-masking the
    # pixels the smaller stamp lacks (its centre pixel 15 stays at 15: row and column 30 are new).
    images = [rng.normal(size=(64, 64)).astype(np.float32) for _ in range(3)]
    images[0][30, 30] += 40.0
    cx = cy = np.array([30.2])
    small = extract_cutouts(images, cx, cy, 30).stamps
    big = extract_cutouts(images, cx, cy, 31).stamps
    np.testing.assert_array_equal(big[:, :, :30, :30], small)
    big[:, :, 30, :] = np.nan
    big[:, :, :, 30] = np.nan
    x30, f30 = prepare_stamps(small, c)
    x31, f31 = prepare_stamps(big, c)
    assert x30.shape == (1, 3, 31, 31) and f30[0] & F.RESIZED and not f31[0] & F.RESIZED
    np.testing.assert_array_equal(x30, x31)
    assert np.all(x30[:, :, 30, :] == c.fill_value) and x30[0, 0, 15, 15] > 1


def test_iter_batches_equal_one_big_prepare():
    rng = np.random.default_rng(15)
    images, masks = make_images(rng, shape=(70, 90))
    n = 123
    x, y = rng.uniform(-3, 93, n), rng.uniform(-3, 73, n)
    x[5] = np.nan
    c = InputContract(stamp_size=21)
    batch = extract_cutouts(images, x, y, 21, masks=masks)
    big, flags = prepare_stamps(batch.stamps, c, batch.flags)
    np.testing.assert_array_equal(flags, batch.flags)
    one, f1 = prepare_cutouts(images, x, y, c, masks=masks)
    np.testing.assert_array_equal(one, big)
    np.testing.assert_array_equal(f1, flags)
    parts = list(iter_cutout_batches(images, x, y, c, 50, masks=masks))
    assert [p[0] for p in parts] == [slice(0, 50), slice(50, 100), slice(100, 123)]
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), big)
    np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), flags)
    # Difference-only contract reads only the difference image.
    cd = InputContract(stamp_size=21, channels=("difference",))
    parts = list(iter_cutout_batches(images, x, y, cd, 1000, masks=masks))
    np.testing.assert_array_equal(parts[0][1], big[:, :1])
    with pytest.raises(ValueError, match="batch_size"):
        iter_cutout_batches(images, x, y, c, 0)


@pytest.mark.parametrize("norm,fill", [("robust_asinh", 0.0), ("robust", -1.5), ("unit", 0.0), ("none", 2.0)])
def test_fused_prepare_equals_two_steps(norm, fill):
    """prepare_cutouts normalises chunks in cache and fills sparsely; it must equal prepare_stamps."""
    rng = np.random.default_rng(23)
    images, masks = make_images(rng, shape=(90, 100))
    n = 150
    x, y = rng.uniform(-6, 106, n), rng.uniform(-6, 96, n)
    x[3] = np.nan
    c = InputContract(stamp_size=21, normalization=norm, fill_value=fill)
    batch = extract_cutouts(images, x, y, 21, masks=masks)
    two, f2 = prepare_stamps(batch.stamps, c, batch.flags)
    one, f1 = prepare_cutouts(images, x, y, c, masks=masks)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_allclose(one, two, rtol=1e-6, atol=1e-6)
    assert np.isfinite(one).all()
    # Untrusted pixels hold the fill value.
    bad = np.isnan(batch.stamps)
    assert bad.any() and np.all(one[bad] == np.float32(fill))


# ---------------------------------------------------------------------------
# Round 2: the image-scan path (sparse lists of bad pixels) must agree exactly with
# the per-stamp path and with the naive reference.
# ---------------------------------------------------------------------------

import lsst.meas.rbnet.cutouts as cutouts_module  # noqa: E402


def _scan_images(rng, shape=(77, 90)):
    """Images with sparse NaN/inf, a bad column, a saturated block and a NO_DATA area.

    H and W are not multiples of the scan's 16-row blocks.
    """
    images, masks = make_images(rng, shape=shape)
    masks[2] = np.zeros(shape, dtype=np.int32)
    masks[0][20:34, 40:60] |= 1 << MASK_PLANES["SAT"]  # dense: a saturated star
    masks[2][:, 70:] |= 1 << MASK_PLANES["NO_DATA"]  # template without coverage on the right
    images[2][:, 70:] = np.nan
    images[1][5:9, 5:9] = np.inf
    return images, masks


def _force(monkeypatch, scan, dense=None):
    # The image scan's tuning constants live in the package's `scan` module, where they are read.
    monkeypatch.setattr(cutouts_module.scan, "_SCAN_MIN_COVERAGE", 0.0 if scan else float("inf"))
    if dense is not None:
        monkeypatch.setattr(cutouts_module.scan, "_SCAN_DENSE_SEGMENTS", dense)


@pytest.mark.parametrize("size", [5, 8, 21, 30])
def test_scan_path_equals_per_stamp_path(size, monkeypatch):
    rng = np.random.default_rng(100 + size)
    images, masks = _scan_images(rng)
    H, W = images[0].shape
    n = 400
    x = rng.uniform(-size, W + size, n)
    y = rng.uniform(-size, H + size, n)
    x[:30] = rng.uniform(35, 65, 30)  # some on the saturated block
    y[:30] = rng.uniform(15, 40, 30)
    x[40], y[41] = np.nan, -np.inf
    ref, rflags, rbad = naive_cutouts(images, masks, x, y, size)
    for scan, dense in ((False, None), (True, 0), (True, 10**9), (True, 24)):
        _force(monkeypatch, scan, dense)
        b = extract_cutouts(images, x, y, size, masks=masks)
        np.testing.assert_array_equal(b.stamps, ref)
        np.testing.assert_array_equal(b.flags, rflags)
        np.testing.assert_array_equal(b.n_bad, rbad)
    # The scan path really listed bad pixels and routed dense stamps to the exact check.
    _force(monkeypatch, True, 24)
    src = cutouts_module._locate(np.asarray(x), np.asarray(y), size, (H, W))
    mbits = cutouts_module._channel_mask_bits(masks, BITS)
    plans = cutouts_module._plan_channels(images, masks, mbits, src)
    assert any(p.pair_stamp.shape[0] > 0 for p in plans)
    assert any(p.exact is not None and p.exact.any() for p in plans)


@pytest.mark.parametrize("norm", ["robust_asinh", "unit"])
def test_scan_path_prepare_and_batches(norm, monkeypatch):
    rng = np.random.default_rng(7)
    images, masks = _scan_images(rng)
    H, W = images[0].shape
    n = 300
    x, y = rng.uniform(-5, W + 5, n), rng.uniform(-5, H + 5, n)
    c = InputContract(stamp_size=21, normalization=norm)
    out = {}
    for scan in (False, True):
        _force(monkeypatch, scan)
        one, f1 = prepare_cutouts(images, x, y, c, masks=masks)
        parts = list(iter_cutout_batches(images, x, y, c, 64, masks=masks))
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), one)
        np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), f1)
        out[scan] = (one, f1)
    np.testing.assert_array_equal(out[True][0], out[False][0])
    np.testing.assert_array_equal(out[True][1], out[False][1])
    batch = extract_cutouts(images, x, y, 21, masks=masks)
    two, f2 = prepare_stamps(batch.stamps, c, batch.flags)
    np.testing.assert_array_equal(out[True][0], two)
    assert np.isfinite(two).all()


def test_scan_sources_in_a_corner_and_wide_rows(monkeypatch):
    """Stamps clustered in one part (scan of a sub-box) of an image whose rows are a slice of wider rows."""
    rng = np.random.default_rng(8)
    wide, masks = make_images(rng, shape=(70, 130))
    images = [im[:, :100] for im in wide]  # row pitch 130 > width 100: edge runs read the parent's pixels
    masks = [None if m is None else m[:, :100] for m in masks]
    for im in wide:
        im[:, 100:] = np.nan  # pixels beyond the slice must never leak in
    n = 250
    x, y = rng.uniform(-6, 30, n), rng.uniform(-6, 25, n)
    ref, rflags, rbad = naive_cutouts(images, masks, x, y, 13)
    for scan in (False, True):
        _force(monkeypatch, scan)
        b = extract_cutouts(images, x, y, 13, masks=masks)
        np.testing.assert_array_equal(b.stamps, ref)
        np.testing.assert_array_equal(b.flags, rflags)
        np.testing.assert_array_equal(b.n_bad, rbad)
    # The right edge of the slice too.
    x2, y2 = rng.uniform(85, 106, n), rng.uniform(-6, 76, n)
    ref, rflags, _ = naive_cutouts(images, masks, x2, y2, 13)
    for scan in (False, True):
        _force(monkeypatch, scan)
        b = extract_cutouts(images, x2, y2, 13, masks=masks)
        np.testing.assert_array_equal(b.stamps, ref)
        np.testing.assert_array_equal(b.flags, rflags)


@pytest.mark.parametrize("size", [9, 10])
def test_stamp_as_large_as_image_corners(size, monkeypatch):
    """W == S and H == S: every run at a corner leaves the image's memory and is read pixel by pixel."""
    rng = np.random.default_rng(9)
    img = rng.normal(size=(size, size)).astype(np.float32)
    img[2, 3] = np.nan
    mask = np.zeros((size, size), dtype=np.int16)
    mask[4, 1] = 1 << MASK_PLANES["CR"]
    x = np.array([0.0, size - 1.0, 0.0, size - 1.0, size / 2, -3.2, size + 2.4])
    y = np.array([0.0, 0.0, size - 1.0, size - 1.0, size / 2, 4.0, -2.6])
    ref, rflags, rbad = naive_cutouts([img], [mask], x, y, size)
    for scan in (False, True):
        _force(monkeypatch, scan)
        b = extract_cutouts([img], x, y, size, masks=[mask])
        np.testing.assert_array_equal(b.stamps, ref)
        np.testing.assert_array_equal(b.flags, rflags)
        np.testing.assert_array_equal(b.n_bad, rbad)


def test_integer_images_and_float64_overflow(monkeypatch):
    rng = np.random.default_rng(10)
    img_i = rng.integers(-500, 500, size=(40, 48)).astype(np.int32)
    img_d = rng.normal(size=(40, 48))
    img_d[10, 10] = 1e39  # finite in float64, inf in float32: untrusted like any non-finite value
    mask = np.zeros((40, 48), dtype=np.uint16)
    mask[20:23, 30] = 1 << MASK_PLANES["BAD"]
    x, y = rng.uniform(0, 48, 200), rng.uniform(0, 40, 200)
    with np.errstate(over="ignore"):
        ref, rflags, rbad = naive_cutouts([img_i, img_d], [mask, None], x, y, 7)
    for scan in (False, True):
        _force(monkeypatch, scan)
        b = extract_cutouts([img_i, img_d], x, y, 7, masks=[mask, None])
        np.testing.assert_array_equal(b.stamps, ref)
        np.testing.assert_array_equal(b.flags, rflags)
        np.testing.assert_array_equal(b.n_bad, rbad)
    near = (np.abs(np.floor(x + 0.5) - 10) <= 3) & (np.abs(np.floor(y + 0.5) - 10) <= 3)
    assert near.any() and np.all(b.flags[near] & F.NONFINITE)


def test_dense_bad_regions_use_boolean_maps():
    """More than 1/16 of a chunk's pixels bad: the dense branch of the per-stamp check must agree too."""
    rng = np.random.default_rng(11)
    images, masks = make_images(rng, shape=(60, 70))
    masks[0][:, :40] |= 1 << MASK_PLANES["NO_DATA"]
    images[1][30:, :] = np.nan
    x, y = rng.uniform(-3, 73, 150), rng.uniform(-3, 63, 150)
    b = extract_cutouts(images, x, y, 11, masks=masks)
    ref, rflags, rbad = naive_cutouts(images, masks, x, y, 11)
    np.testing.assert_array_equal(b.stamps, ref)
    np.testing.assert_array_equal(b.flags, rflags)
    np.testing.assert_array_equal(b.n_bad, rbad)


def test_median_with_untrusted_pixels_matches_nanmedian():
    """The -inf/+inf filling gives the median and MAD of the trusted pixels for any count of bad ones."""
    rng = np.random.default_rng(12)
    for s in (21, 30, 51):
        st = rng.normal(3.0, 2.0, size=(40, 1, s, s)).astype(np.float32)
        flat = st.reshape(40, -1)
        for i in range(40):
            # 0, 1, 2, ... bad pixels (odd and even valid counts), then most of the stamp.
            k = i if i < 30 else s * s - 3 * (40 - i)
            flat[i, rng.permutation(s * s)[:k]] = np.nan
        med, sigma = cutouts_module._robust_center_scale(flat.copy(), s, s, np.isnan(flat).any(axis=1))
        gr, gc = stats_pixel_grid(s)
        for i in range(40):
            grid = st[i, 0][gr, gc].astype(np.float64)
            if np.isfinite(grid).any():
                m = np.nanmedian(grid)
                mad = np.nanmedian(np.abs(grid - m))
                np.testing.assert_allclose(med[i], m, rtol=1e-6, atol=1e-6)
                if mad > 0:
                    np.testing.assert_allclose(sigma[i], 1.4826 * mad, rtol=1e-5)


def test_iter_batches_reuse_buffer():
    rng = np.random.default_rng(13)
    images, masks = make_images(rng, shape=(60, 80))
    x, y = rng.uniform(0, 80, 90), rng.uniform(0, 60, 90)
    c = InputContract(stamp_size=21)
    fresh = [(sl, st.copy(), f) for sl, st, f in iter_cutout_batches(images, x, y, c, 40, masks=masks)]
    seen = []
    for (sl, st, f), (sl2, ref, f2) in zip(
        iter_cutout_batches(images, x, y, c, 40, masks=masks, reuse_buffer=True), fresh
    ):
        assert sl == sl2
        np.testing.assert_array_equal(st, ref)  # correct while it is the current batch
        np.testing.assert_array_equal(f, f2)
        seen.append(st)
    assert [s.shape[0] for s in seen] == [40, 40, 10]
    # One buffer: the views share memory, and a kept batch was overwritten by the next one.
    assert np.shares_memory(seen[0], seen[1]) and np.shares_memory(seen[0], seen[2])
    assert not np.array_equal(seen[0], fresh[0][1])
