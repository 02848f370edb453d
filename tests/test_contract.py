"""Tests of the constants, flags and input contract (no torch needed)."""

import pytest

from lsst.meas.rbnet.constants import (
    ALL_CLASSES,
    ARTIFACT_CLASSES,
    CHANNEL_ORDER,
    MASK_PLANES,
    REAL_CLASSES,
    class_index,
    mask_bits,
)
from lsst.meas.rbnet.contract import InputContract
from lsst.meas.rbnet.flags import UNSCORABLE, SourceFlag, describe_flags


def test_class_index_maps_real_subclasses_to_zero():
    for name in REAL_CLASSES:
        assert class_index(name) == 0
    for i, name in enumerate(ARTIFACT_CLASSES, start=1):
        assert class_index(name) == i
        assert ALL_CLASSES[i] == name
    with pytest.raises(ValueError, match="Unknown source class 'banana'"):
        class_index("banana")


def test_mask_bits():
    assert mask_bits(["BAD", "CR"]) == (1 << MASK_PLANES["BAD"]) | (1 << MASK_PLANES["CR"])
    # A plane missing from an image's own mapping cannot be set, so it is ignored.
    assert mask_bits(["SAT", "STREAK"], {"SAT": 3}) == 1 << 3
    assert mask_bits([]) == 0


def test_flags_are_distinct_bits_and_described():
    values = [int(f) for f in SourceFlag]
    assert len(set(values)) == len(values)
    assert all(v & (v - 1) == 0 for v in values)
    assert describe_flags(int(SourceFlag.EDGE | SourceFlag.MASKED)) == ["EDGE", "MASKED"]
    assert UNSCORABLE & SourceFlag.OFF_IMAGE
    assert not UNSCORABLE & SourceFlag.EDGE


def test_contract_round_trip_and_validation():
    c = InputContract(stamp_size=33, channels=["difference"], normalization="unit")
    assert c.channels == ("difference",)
    assert c.channel_indices == (0,)
    assert InputContract.from_dict(c.to_dict()) == c
    assert InputContract().channel_indices == tuple(range(len(CHANNEL_ORDER)))
    with pytest.raises(ValueError, match="odd"):
        InputContract(stamp_size=30)
    with pytest.raises(ValueError, match="outside"):
        InputContract(stamp_size=19)
    with pytest.raises(ValueError, match="channels"):
        InputContract(channels=("difference", "difference"))
    with pytest.raises(ValueError, match="channels"):
        InputContract(channels=("u-band",))
    with pytest.raises(ValueError, match="normalization"):
        InputContract(normalization="zscale")
    with pytest.raises(ValueError, match="newer"):
        InputContract.from_dict({**c.to_dict(), "gamma": 2})
