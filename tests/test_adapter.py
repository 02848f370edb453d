# This file is part of meas_rbnet.
"""Tests of lsst.meas.rbnet.tasks.adapter: image objects to numpy arrays."""

import astropy.wcs
import numpy as np
import pytest

from lsst.meas.rbnet.constants import MASK_PLANES
from lsst.meas.rbnet.tasks.adapter import (
    ImageArrays,
    canonical_mask_planes,
    check_same_bbox,
    masked_image_from_legacy,
    to_arrays,
)


def _wcs():
    w = astropy.wcs.WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [20, 16]
    w.wcs.crval = [10.0, -5.0]
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return w


def _planes(shape=(32, 40), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape).astype(np.float32)
    variance = rng.uniform(1, 2, size=shape).astype(np.float32)
    mask = np.zeros(shape, np.int32)
    mask[:3] |= 1 << MASK_PLANES["NO_DATA"]
    mask[5, 7] |= 1 << MASK_PLANES["CR"]
    mask[9, :] |= 1 << MASK_PLANES["BAD"]
    return image, variance, mask


def test_canonical_planes_keep_known_bits_and_append_others():
    mapping = canonical_mask_planes(["CR", "FOO", "NO_DATA", "BAR"])
    assert mapping["CR"] == MASK_PLANES["CR"]
    assert mapping["NO_DATA"] == MASK_PLANES["NO_DATA"]
    assert mapping["FOO"] not in MASK_PLANES.values()
    assert mapping["BAR"] not in MASK_PLANES.values()
    assert mapping["FOO"] != mapping["BAR"]


def test_canonical_planes_drop_what_does_not_fit():
    names = [f"P{i}" for i in range(40)]
    mapping = canonical_mask_planes(names)
    assert len(mapping) == 31 - len(MASK_PLANES)
    assert max(mapping.values()) < 31


@pytest.mark.parametrize("kind", ["visit", "difference", "masked"])
def test_lsst_images_round_trip(kind):
    from lsst.meas.rbnet.butler.images import make_difference_image, make_masked_image, make_visit_image

    image, variance, mask = _planes()
    common = dict(
        wcs=_wcs(),
        instrument="X",
        detector=2,
        visit=5,
        band="r",
        physical_filter="x_r",
        mjd=60000.0,
        fwhm=3.0,
    )
    if kind == "visit":
        obj = make_visit_image(image, variance, mask, **common)
    elif kind == "difference":
        obj = make_difference_image(image, variance, mask, **common)
    else:
        obj = make_masked_image(image, variance, mask)
    arrays = to_arrays(obj, name=kind)
    np.testing.assert_array_equal(arrays.image, image)
    np.testing.assert_array_equal(arrays.variance, variance)
    np.testing.assert_array_equal(arrays.mask, mask)
    assert arrays.mask.dtype == np.int32
    assert arrays.mask_planes["NO_DATA"] == MASK_PLANES["NO_DATA"]
    assert arrays.bbox == (0, 0, 40, 32)
    assert arrays.bits(["NO_DATA", "CR", "NOT_A_PLANE"]) == (1 << MASK_PLANES["NO_DATA"]) | (
        1 << MASK_PLANES["CR"]
    )


def test_lsst_images_uint8_mask_with_unknown_plane_and_offset_origin():
    """A mask packed in uint8 over two bytes, a plane we do not know, and a bbox not at (0, 0)."""
    from lsst.images import Image, Mask, MaskedImage, MaskPlane, MaskSchema

    names = ["A1", "A2", "A3", "A4", "A5", "A6", "A7", "A8", "NO_DATA", "CUSTOM"]
    schema = MaskSchema([MaskPlane(n, n) for n in names], dtype=np.uint8)
    shape = (8, 6)
    mask = Mask(schema=schema, shape=shape, yx0=(100, 50))
    hit_nd = np.zeros(shape, bool)
    hit_nd[0, :] = True
    hit_c = np.zeros(shape, bool)
    hit_c[:, 1] = True
    mask.set("NO_DATA", hit_nd)
    mask.set("CUSTOM", hit_c)
    obj = MaskedImage(
        Image(np.zeros(shape, np.float32), yx0=(100, 50)),
        mask=mask,
        variance=Image(np.ones(shape, np.float32), yx0=(100, 50)),
    )
    arrays = to_arrays(obj, planes=["CUSTOM", "NO_DATA"])
    assert (arrays.x0, arrays.y0) == (50, 100)
    nd = (arrays.mask >> arrays.mask_planes["NO_DATA"]) & 1
    custom = (arrays.mask >> arrays.mask_planes["CUSTOM"]) & 1
    np.testing.assert_array_equal(nd.astype(bool), hit_nd)
    np.testing.assert_array_equal(custom.astype(bool), hit_c)
    # Planes not asked for and not in MASK_PLANES are dropped.
    assert "A1" not in arrays.mask_planes


def test_duck_typed_arrays_and_remap():
    image, variance, mask = _planes()

    class Sim:
        pass

    sim = Sim()
    sim.image, sim.variance = image, variance
    # A mask numbered differently from MASK_PLANES is remapped to the canonical bits.
    sim.mask = np.where(mask & (1 << MASK_PLANES["CR"]), 1 << 20, 0).astype(np.int32)
    sim.mask_planes = {"CR": 20}
    arrays = to_arrays(sim)
    assert arrays.mask_planes == {"CR": MASK_PLANES["CR"]}
    np.testing.assert_array_equal(arrays.mask, mask & (1 << MASK_PLANES["CR"]))


def test_plain_array_and_image_arrays_pass_through():
    image, variance, mask = _planes()
    a = to_arrays(image)
    assert a.mask is None and a.variance is None
    ia = ImageArrays(image, variance, mask, dict(MASK_PLANES))
    assert to_arrays(ia) is ia


def test_unknown_type_names_the_image():
    with pytest.raises(TypeError, match="template"):
        to_arrays("not an image", name="template")


def test_shape_mismatch_is_an_error():
    image, variance, mask = _planes()
    with pytest.raises(ValueError, match="science variance"):
        to_arrays(ImageArrays(image, variance[:-1], mask, {}), name="science")


def test_check_same_bbox():
    image, variance, mask = _planes()
    a = ImageArrays(image, variance, mask, {})
    b = ImageArrays(image, variance, mask, {}, x0=3)
    assert check_same_bbox({"difference": a, "science": a}) == (0, 0, 40, 32)
    with pytest.raises(ValueError, match="science.*x0, y0, width, height.*3, 0"):
        check_same_bbox({"difference": a, "science": b})


def test_afw_objects_are_read_through_their_accessors(monkeypatch):
    """With lsst.afw.image imported, Exposure/MaskedImage instances go through the afw path
    (a stand-in module here: afw is not installable from PyPI)."""
    import sys
    import types

    image, variance, mask = _planes()
    afw_mask = np.where(mask & (1 << MASK_PLANES["NO_DATA"]), 1 << 12, 0).astype(np.int32)

    class _Array:
        def __init__(self, a):
            self.a = a

        def getArray(self):
            return self.a

    class _Mask(_Array):
        def getMaskPlaneDict(self):
            return {"NO_DATA": 12, "BAD": 0}

    class _Point:
        def getX(self):
            return 7

        def getY(self):
            return 9

    module = types.ModuleType("lsst.afw.image")

    class MaskedImage:
        def getImage(self):
            return _Array(image)

        def getVariance(self):
            return _Array(variance)

        def getMask(self):
            return _Mask(afw_mask)

        def getXY0(self):
            return _Point()

    class Exposure:
        def getMaskedImage(self):
            return MaskedImage()

    module.Exposure, module.MaskedImage = Exposure, MaskedImage
    monkeypatch.setitem(sys.modules, "lsst.afw.image", module)
    for obj in (Exposure(), MaskedImage()):
        arrays = to_arrays(obj, name="template")
        assert (arrays.x0, arrays.y0) == (7, 9)
        np.testing.assert_array_equal(arrays.image, image)
        np.testing.assert_array_equal(arrays.mask, mask & (1 << MASK_PLANES["NO_DATA"]))
        assert arrays.mask_planes["NO_DATA"] == MASK_PLANES["NO_DATA"]


def test_masked_image_from_legacy_uses_the_masked_image_of_an_exposure(monkeypatch):
    import lsst.images

    seen = {}

    def fake_from_legacy(masked):
        seen["arg"] = masked
        return "converted"

    monkeypatch.setattr(lsst.images.MaskedImage, "from_legacy", staticmethod(fake_from_legacy))

    class Exposure:
        def getMaskedImage(self):
            return "the masked image"

    assert masked_image_from_legacy(Exposure()) == "converted"
    assert seen["arg"] == "the masked image"
    plain = object()
    masked_image_from_legacy(plain)
    assert seen["arg"] is plain
