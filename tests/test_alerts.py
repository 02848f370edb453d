# This file is part of meas_rbnet.
"""Tests of lsst.meas.rbnet.alerts and ``rbnet score-alerts``.

Every alert file is built here: ZTF-layout Avro through a schema written below
from the public ZTF alert field layout (the fields the reader needs plus a few
realistic extras and a light curve to skip), Rubin packets through the schemas
that ``lsst-alert-packet`` ships, broker Parquet files through pyarrow. The
cutouts are FITS files written with astropy (ZTF: gzip-compressed single HDU;
Rubin: ``CCDData`` in nJy with a variance extension, as Rubin writes them), with
pixels from the simulator, and, in a second check, from the real cutouts in
``../shared/realdata`` beside the checkout.
"""

from __future__ import annotations

import copy
import gzip
import io
from pathlib import Path

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.table import Table

from lsst.meas.rbnet.alerts import RECORD_PROBLEMS, AlertFlag, iter_alert_batches, iter_messages, score_alerts
from lsst.meas.rbnet.alerts.batch import batches_from_raw
from lsst.meas.rbnet.alerts.fits import CutoutError, decode_cutout, read_fits_image, read_fits_image_astropy
from lsst.meas.rbnet.constants import CHANNEL_ORDER

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
DIF, SCI, TMP = (CHANNEL_ORDER.index(c) for c in ("difference", "science", "template"))

# ----------------------------------------------------------------------
# ZTF alert schema, from the public field layout (ztf.alert 3.3), reduced
# ----------------------------------------------------------------------


def _nullable(name, typ, doc=""):
    return {"name": name, "type": [typ, "null"], "doc": doc}


ZTF_CANDIDATE_FIELDS = [
    {"name": "jd", "type": "double", "doc": "Observation Julian date at start of exposure [days]"},
    {"name": "fid", "type": "int", "doc": "Filter ID (1=g; 2=R; 3=i)"},
    {"name": "pid", "type": "long", "doc": "Processing ID for science image"},
    _nullable("diffmaglim", "float", "Expected 5-sigma mag limit in difference image"),
    {"name": "programid", "type": "int"},
    {"name": "candid", "type": "long", "doc": "Candidate ID from operations DB"},
    {
        "name": "isdiffpos",
        "type": "string",
        "doc": "t or 1 => candidate is from positive (sci minus ref) subtraction",
    },
    _nullable("tblid", "long"),
    _nullable("rcid", "int"),
    _nullable("field", "int"),
    _nullable("xpos", "float", "x-image position of candidate [pixels]"),
    _nullable("ypos", "float", "y-image position of candidate [pixels]"),
    {"name": "ra", "type": "double"},
    {"name": "dec", "type": "double"},
    {"name": "magpsf", "type": "float"},
    {"name": "sigmapsf", "type": "float"},
    _nullable("rb", "float", "RealBogus quality score from Random Forest classifier"),
    _nullable("drb", "float", "RealBogus quality score from Deep-Learning-based classifier"),
    _nullable("drbversion", "string"),
    _nullable("ssdistnr", "float"),
    _nullable("sgscore1", "float"),
    _nullable("distpsnr1", "float"),
]
ZTF_PRV_FIELDS = [
    {"name": "jd", "type": "double"},
    {"name": "fid", "type": "int"},
    _nullable("candid", "long"),
    _nullable("magpsf", "float"),
    _nullable("sigmapsf", "float"),
    _nullable("rb", "float"),
    _nullable("isdiffpos", "string"),
]


def ztf_schema(n_extra: int = 0, n_prv_extra: int = 0) -> dict:
    """The ZTF alert schema; ``n_extra`` (``n_prv_extra``) more float fields per candidate (previous
    candidate) make decoding as costly as with the real schema (about 100 and 57 fields)."""
    extra = [_nullable(f"extra{i}", "float") for i in range(n_extra)]
    prv_extra = [_nullable(f"extra{i}", "float") for i in range(n_prv_extra)]
    return {
        "namespace": "ztf",
        "type": "record",
        "name": "alert",
        "doc": "avro alert schema for ZTF (www.ztf.caltech.edu)",
        "version": "3.3",
        "fields": [
            {"name": "schemavsn", "type": "string"},
            {"name": "publisher", "type": "string"},
            {"name": "objectId", "type": "string"},
            {"name": "candid", "type": "long"},
            {
                "name": "candidate",
                "type": {
                    "type": "record",
                    "name": "candidate",
                    "namespace": "ztf.alert",
                    "fields": ZTF_CANDIDATE_FIELDS + extra,
                },
            },
            {
                "name": "prv_candidates",
                "type": [
                    {
                        "type": "array",
                        "items": {
                            "type": "record",
                            "name": "prv_candidate",
                            "namespace": "ztf.alert",
                            "fields": ZTF_PRV_FIELDS + prv_extra,
                        },
                    },
                    "null",
                ],
            },
            {
                "name": "cutoutScience",
                "type": [
                    {
                        "type": "record",
                        "name": "cutout",
                        "namespace": "ztf.alert",
                        "fields": [
                            {"name": "fileName", "type": "string"},
                            {"name": "stampData", "type": "bytes"},
                        ],
                    },
                    "null",
                ],
            },
            {"name": "cutoutTemplate", "type": ["ztf.alert.cutout", "null"]},
            {"name": "cutoutDifference", "type": ["ztf.alert.cutout", "null"]},
        ],
    }


def ztf_fits(image: np.ndarray) -> bytes:
    """A ZTF cutout: a single-HDU float32 FITS file, gzip-compressed."""
    buf = io.BytesIO()
    fits.PrimaryHDU(np.asarray(image, dtype=np.float32)).writeto(buf)
    return gzip.compress(buf.getvalue())


def ztf_record(
    i: int,
    science,
    template,
    difference,
    *,
    n_extra=0,
    n_prv_extra=0,
    n_prv=3,
    xpos=500.0,
    ypos=600.0,
    rb=0.7,
    drb=0.9,
    encode=ztf_fits,
) -> dict:
    candid = 2_000_000_000_000_000 + i
    cand = {f["name"]: None for f in ZTF_CANDIDATE_FIELDS}
    cand.update(
        jd=2460000.5 + i,
        fid=1 + i % 2,
        pid=10 * i,
        programid=1,
        candid=candid,
        isdiffpos="t" if i % 3 else "f",
        xpos=xpos,
        ypos=ypos,
        ra=10.0,
        dec=-5.0,
        magpsf=19.0,
        sigmapsf=0.1,
        rb=rb,
        drb=drb,
        drbversion="d6_m7",
    )
    cand.update({f"extra{k}": float(k) for k in range(n_extra)})
    prv = [
        dict(
            {
                "jd": 2459990.5 + k,
                "fid": 1,
                "candid": None,
                "magpsf": 19.5,
                "sigmapsf": 0.2,
                "rb": 0.5,
                "isdiffpos": "t",
            },
            **{f"extra{k2}": 1.0 for k2 in range(n_prv_extra)},
        )
        for k in range(n_prv)
    ]

    def cutout(name, img):
        return (
            None
            if img is None
            else {
                "fileName": f"candid{candid}_{name}.fits.gz",
                "stampData": img if isinstance(img, bytes) else encode(img),
            }
        )

    return {
        "schemavsn": "3.3",
        "publisher": "ZTF (www.ztf.caltech.edu)",
        "objectId": f"ZTF24aaa{i:05d}",
        "candid": candid,
        "candidate": cand,
        "prv_candidates": prv,
        "cutoutScience": cutout("scimref", science),
        "cutoutTemplate": cutout("ref", template),
        "cutoutDifference": cutout("diff", difference),
    }


def write_ztf(path, records, codec="deflate", sync_interval=16000, n_extra=0, n_prv_extra=0) -> None:
    with open(path, "wb") as fo:
        fastavro.writer(
            fo,
            fastavro.parse_schema(ztf_schema(n_extra, n_prv_extra)),
            records,
            codec=codec,
            sync_interval=sync_interval,
        )


# ----------------------------------------------------------------------
# Rubin alerts through lsst-alert-packet
# ----------------------------------------------------------------------


def rubin_schema(version: str = "latest"):
    import lsst.alert.packet as lap

    if version == "latest":
        return lap.Schema.from_file()
    major, minor = version.split(".")
    return lap.Schema.from_file(
        f"{lap.get_schema_path(int(major), int(minor))}/lsst.v{major}_{minor}.alert.avsc"
    )


def _default(typ, named):
    """A valid value of an Avro type: null where allowed, else zero/empty."""
    if isinstance(typ, list):
        return None if "null" in typ else _default(typ[0], named)
    if isinstance(typ, str):
        if typ in named:
            return _default(named[typ], named)
        return {
            "boolean": False,
            "int": 0,
            "long": 0,
            "float": 0.0,
            "double": 0.0,
            "string": "",
            "bytes": b"",
            "null": None,
        }[typ]
    t = typ["type"]
    if t == "record":
        named[typ["name"]] = typ
        return {f["name"]: _default(f["type"], named) for f in typ["fields"]}
    if t == "array":
        return []
    if t == "map":
        return {}
    if t == "enum":
        return typ["symbols"][0]
    return _default(t, named)


def rubin_fits(image: np.ndarray) -> bytes:
    """A Rubin cutout as Rubin writes it: ``CCDData`` in nJy with a variance extension."""
    from astropy.nddata import CCDData, VarianceUncertainty

    image = np.asarray(image, dtype=np.float32)
    ccd = CCDData(image, unit="nJy", uncertainty=VarianceUncertainty(np.ones_like(image)))
    buf = io.BytesIO()
    ccd.write(buf, format="fits")
    return buf.getvalue()


def rubin_record(
    schema, i, science, template, difference, *, reliability=0.8, x=1000.0, y=1000.0, encode=rubin_fits
) -> dict:
    rec = _default(copy.deepcopy(schema.definition), {})
    src_id = 170_000_000_000_000_000 + i
    src = rec["diaSource"]
    src.update(diaSourceId=src_id, diaObjectId=313_000_000_000_000_000 + i, x=x, y=y)
    if "reliability" in src:
        src["reliability"] = reliability
    if "diaSourceId" in rec:
        rec["diaSourceId"] = src_id
    if "alertId" in rec:
        rec["alertId"] = src_id
    for field, img in (
        ("cutoutScience", science),
        ("cutoutTemplate", template),
        ("cutoutDifference", difference),
    ):
        if field in rec:
            rec[field] = None if img is None else (img if isinstance(img, bytes) else encode(img))
    return rec


def write_rubin(path, schema, records) -> None:
    with open(path, "wb") as fo:
        schema.store_alerts(fo, records)


def confluent(schema, record, schema_id=None) -> bytes:
    sid = schema.get_schema_id() if schema_id is None else schema_id
    return b"\x00" + sid.to_bytes(4, "big") + schema.serialize(record)


# ----------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim63():
    from lsst.meas.rbnet.sim import simulate_stamps

    s = simulate_stamps(12, stamp_size=63, seed=7)
    stamps = s.stamps.copy()
    stamps[:, SCI] += 300.0  # ZTF science and reference cutouts carry the sky
    stamps[:, TMP] += 280.0
    return stamps


@pytest.fixture(scope="module")
def sim30():
    from lsst.meas.rbnet.sim import simulate_stamps

    return np.ascontiguousarray(simulate_stamps(8, stamp_size=31, seed=8).stamps[:, :, :30, :30])


def ztf_records(stamps, start=0, **kw):
    return [ztf_record(start + i, s[SCI], s[TMP], s[DIF], **kw) for i, s in enumerate(stamps)]


def read_all(paths, **kw):
    batches = list(iter_alert_batches(paths, **kw))
    return batches


# ----------------------------------------------------------------------
# FITS decoding
# ----------------------------------------------------------------------


def _hdus_bytes(hdus) -> bytes:
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    return buf.getvalue()


def test_lean_fits_reader_matches_astropy():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(21, 17)).astype(np.float32)
    img[3, 4] = np.nan
    ints = rng.integers(-1000, 1000, size=(9, 11)).astype(np.int16)
    scaled = fits.PrimaryHDU(ints.copy())
    scaled.header["BSCALE"] = 0.5
    scaled.header["BZERO"] = 10.0
    scaled.header["BLANK"] = int(ints[0, 0])
    cases = {
        "float32": _hdus_bytes([fits.PrimaryHDU(img)]),
        "float64": _hdus_bytes([fits.PrimaryHDU(img.astype(np.float64))]),
        "int16 scaled with BLANK": _hdus_bytes([scaled]),
        "image in an extension": _hdus_bytes([fits.PrimaryHDU(), fits.ImageHDU(img)]),
        "rubin CCDData": rubin_fits(img),
        "gzip": gzip.compress(_hdus_bytes([fits.PrimaryHDU(img)])),
    }
    for name, data in cases.items():
        lean, lean_unit = decode_cutout(data)
        ref, ref_unit = decode_cutout(data, lean=False)
        assert lean.shape == ref.shape, name
        np.testing.assert_array_equal(
            np.asarray(lean, dtype=np.float64), np.asarray(ref, dtype=np.float64), name
        )
        assert lean_unit == ref_unit, name
    lean, _ = decode_cutout(cases["int16 scaled with BLANK"])
    assert np.isnan(lean[0, 0]) and lean[0, 1] == ints[0, 1] * 0.5 + 10.0
    assert decode_cutout(cases["rubin CCDData"])[1] == "nJy"


def test_fits_reader_refuses_bad_bytes():
    good = _hdus_bytes([fits.PrimaryHDU(np.zeros((5, 5), np.float32))])
    with pytest.raises(CutoutError, match="not a FITS"):
        read_fits_image(b"hello world" * 300)
    with pytest.raises(CutoutError, match="truncated"):
        read_fits_image(good[: 2880 + 40])
    with pytest.raises(CutoutError, match="END"):
        read_fits_image(good[:200])
    with pytest.raises(CutoutError, match="gzip"):
        decode_cutout(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(CutoutError):
        read_fits_image_astropy(b"nothing")


# ----------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------


def test_ztf_container_many_alerts_in_batches(tmp_path, sim63):
    path = tmp_path / "ztf.avro"
    write_ztf(path, ztf_records(sim63[:6]))
    batches = read_all(path, batch_size=4)
    assert [len(b) for b in batches] == [4, 2]
    b = batches[0]
    assert b.survey == "ztf" and b.unit == "DN"
    assert b.science.shape == (4, 63, 63) and b.stamps.dtype == np.float32
    np.testing.assert_array_equal(b.science, sim63[:4, SCI])
    np.testing.assert_array_equal(b.template, sim63[:4, TMP])
    np.testing.assert_array_equal(b.difference, sim63[:4, DIF])
    ids = np.concatenate([np.asarray(x.table["alertId"]) for x in batches])
    np.testing.assert_array_equal(ids, 2_000_000_000_000_000 + np.arange(6))
    assert list(b.table["objectId"][:2]) == ["ZTF24aaa00000", "ZTF24aaa00001"]
    np.testing.assert_allclose(b.table["ztf_drb"], 0.9, rtol=1e-6)
    np.testing.assert_allclose(b.table["ztf_rb"], 0.7, rtol=1e-6)
    assert (b.flags == 0).all() and b.cutout_ok.all()


def test_mixed_inputs_files_directories_globs_in_order(tmp_path, sim63, sim30):
    d = tmp_path / "night"
    d.mkdir()
    for k in range(3):
        write_ztf(d / f"{k}.avro", ztf_records(sim63[k : k + 1], start=k))
    (d / "_SUCCESS").write_bytes(b"")  # a Spark marker: left out of a directory
    (d / "notes.txt").write_text("not an alert")  # unknown format inside a directory: left out
    schema = rubin_schema()
    msgs = tmp_path / "msgs"
    msgs.mkdir()
    for k in range(2):
        (msgs / f"m{k}.bin").write_bytes(
            confluent(schema, rubin_record(schema, k, *sim30[k, [SCI, TMP, DIF]]))
        )
    single = tmp_path / "one.avro"
    write_ztf(single, ztf_records(sim63[5:6], start=5))
    batches = read_all([str(d), str(msgs / "*.bin"), str(single)], batch_size=100)
    # A change of survey starts a new batch; rows stay in input order.
    assert [(b.survey, len(b)) for b in batches] == [("ztf", 3), ("rubin", 2), ("ztf", 1)]
    assert batches[1].science.shape == (2, 30, 30) and batches[1].unit == "nJy"
    ids = [int(i) for b in batches for i in b.table["alertId"]]
    assert ids[:3] == [2_000_000_000_000_000 + k for k in range(3)]
    assert ids[3:5] == [170_000_000_000_000_000, 170_000_000_000_000_001]
    with pytest.raises(FileNotFoundError, match="nomatch"):
        read_all([str(tmp_path / "nomatch*.avro")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_all([str(tmp_path / "absent.avro")])


@pytest.mark.parametrize("version", ["latest", "7.4", "9.0"])
def test_rubin_container_and_wire_format(tmp_path, sim30, version):
    schema = rubin_schema(version)
    recs = [rubin_record(schema, i, *sim30[i, [SCI, TMP, DIF]], reliability=0.1 * i) for i in range(4)]
    path = tmp_path / "rubin.avro"
    write_rubin(path, schema, recs)
    (b,) = read_all(path)
    assert b.survey == "rubin" and b.unit == "nJy" and b.stamps.shape == (4, 3, 30, 30)
    # Rubin cutouts are in nJy as written: the pixels come back unchanged.
    np.testing.assert_array_equal(b.stamps, sim30[:4])
    np.testing.assert_allclose(b.table["rubin_reliability"], 0.1 * np.arange(4), atol=1e-6)
    assert list(b.table["objectId"][:1]) == [str(313_000_000_000_000_000)]
    raws = list(iter_messages([confluent(schema, r) for r in recs]))
    (b2,) = list(batches_from_raw(raws))
    np.testing.assert_array_equal(b2.stamps, b.stamps)
    np.testing.assert_array_equal(b2.table["alertId"], b.table["alertId"])


def test_every_shipped_rubin_schema_decodes_from_the_wire_format(sim30):
    from lsst.meas.rbnet.alerts.avro import rubin_schema_ids

    versions = sorted(rubin_schema_ids().values(), key=lambda v: tuple(map(int, v.split("."))))
    assert "11.1" in versions and "7.4" in versions
    messages = []
    for k, version in enumerate(versions):
        schema = rubin_schema(version)
        messages.append(confluent(schema, rubin_record(schema, k, *sim30[0, [SCI, TMP, DIF]])))
    (b,) = list(batches_from_raw(iter_messages(messages)))
    assert len(b) == len(versions) and not (b.flags & RECORD_PROBLEMS).any()
    np.testing.assert_array_equal(b.table["alertId"], 170_000_000_000_000_000 + np.arange(len(versions)))
    np.testing.assert_array_equal(b.difference, np.broadcast_to(sim30[0, DIF], b.difference.shape))
    # Science cutouts appear with schema 6.1.
    has_science = [tuple(map(int, v.split("."))) >= (6, 1) for v in versions]
    np.testing.assert_array_equal(b.cutout_ok[:, SCI], has_science)


def test_rubin_schema_without_science_cutout_scores_only_difference_models(tmp_path, sim30):
    schema = rubin_schema("6.0")  # schemas before 6.1 have no cutoutScience
    path = tmp_path / "v6.avro"
    write_rubin(path, schema, [rubin_record(schema, 0, None, sim30[0, TMP], sim30[0, DIF])])
    (b,) = read_all(path)
    assert b.flags[0] & AlertFlag.MISSING_CUTOUT
    assert list(b.cutout_ok[0]) == [True, False, True]  # difference, science, template
    t = score_alerts(path)
    assert np.isnan(t["score"][0]) and t["flags"][0] & AlertFlag.NOT_SCORED


def _fink_ztf_table(stamps, start=0):
    recs = ztf_records(stamps, start=start)
    cols = {
        "objectId": [r["objectId"] for r in recs],
        "candid": [r["candid"] for r in recs],
        "candidate": [r["candidate"] for r in recs],
        "cutoutScience": [r["cutoutScience"] for r in recs],
        "cutoutTemplate": [r["cutoutTemplate"] for r in recs],
        "cutoutDifference": [r["cutoutDifference"] for r in recs],
        # Columns a broker adds; the reader never reads them.
        "cdsxmatch": ["Unknown"] * len(recs),
        "rf_snia_vs_nonia": [0.1] * len(recs),
    }
    return pa.table(cols)


def test_parquet_fink_ztf_layout_by_row_groups(tmp_path, sim63):
    path = tmp_path / "fink.parquet"
    pq.write_table(_fink_ztf_table(sim63[:7]), path, row_group_size=3)
    batches = read_all(path, batch_size=2)
    assert sum(len(b) for b in batches) == 7 and all(len(b) <= 2 for b in batches)
    stamps = np.concatenate([b.stamps for b in batches])
    np.testing.assert_array_equal(stamps, sim63[:7])
    ids = np.concatenate([np.asarray(b.table["alertId"]) for b in batches])
    np.testing.assert_array_equal(ids, 2_000_000_000_000_000 + np.arange(7))
    assert batches[0].table["ztf_drb"][0] == pytest.approx(0.9)


def test_parquet_rubin_layout(tmp_path, sim30):
    schema = rubin_schema()
    recs = [rubin_record(schema, i, *sim30[i, [SCI, TMP, DIF]], reliability=0.5) for i in range(3)]
    table = pa.table(
        {
            "diaSource": [
                {
                    "diaSourceId": r["diaSource"]["diaSourceId"],
                    "diaObjectId": r["diaSource"]["diaObjectId"],
                    "reliability": 0.5,
                    "x": 10.0,
                    "y": 10.0,
                    "ra": 1.0,
                }
                for r in recs
            ],
            "cutoutScience": [r["cutoutScience"] for r in recs],
            "cutoutTemplate": [r["cutoutTemplate"] for r in recs],
            "cutoutDifference": [r["cutoutDifference"] for r in recs],
            "finkclass": ["Unknown"] * 3,
        }
    )
    path = tmp_path / "rubin.parquet"
    pq.write_table(table, path)
    (b,) = read_all(path)
    assert b.survey == "rubin" and b.unit == "nJy"
    np.testing.assert_array_equal(b.stamps, sim30[:3])
    assert b.table["alertId"][2] == 170_000_000_000_000_002


def test_tar_archive_of_alert_files(tmp_path, sim63):
    import tarfile

    members = []
    for k in range(3):
        p = tmp_path / f"{k}.avro"
        write_ztf(p, ztf_records(sim63[k : k + 1], start=k))
        members.append(p)
    archive = tmp_path / "ztf_public_20240101.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for p in members:
            tar.add(p, arcname=p.name)
    (b,) = read_all(archive)
    np.testing.assert_array_equal(b.stamps, sim63[:3])
    assert b.table["source"][0].endswith(":0.avro")


def test_edge_cutouts_padded_on_the_missing_side_and_larger_ones_cropped(tmp_path, sim63, sim30):
    s = sim63[0]
    cut = s[:, :, 13:]  # 63 x 50: 13 columns lost at the low-x edge of the CCD
    low = ztf_record(0, cut[SCI], cut[TMP], cut[DIF], xpos=18.0, ypos=600.0)
    unknown = ztf_record(1, cut[SCI], cut[TMP], cut[DIF], xpos=None, ypos=None)
    path = tmp_path / "edge.avro"
    write_ztf(path, [low, unknown])
    (b,) = read_all(path)
    assert b.stamps.shape == (2, 3, 63, 63)
    assert all(f & AlertFlag.PADDED for f in b.flags) and b.cutout_ok.all()
    # Near the low edge: the missing columns are on the low side, so the source stays centred.
    np.testing.assert_array_equal(b.stamps[0, :, :, 13:], cut)
    assert np.isnan(b.stamps[0, :, :, :13]).all()
    # Position unknown: padded on the high side.
    np.testing.assert_array_equal(b.stamps[1, :, :, :50], cut)
    assert list(b.table["cutoutWidth"]) == [50, 50] and list(b.table["cutoutHeight"]) == [63, 63]
    assert not any(f & AlertFlag.NAN_PIXELS for f in b.flags)
    # A larger Rubin cutout (an extended source) is cropped about its centre pixel, unless asked otherwise.
    schema = rubin_schema()
    big = np.arange(3 * 93 * 93, dtype=np.float32).reshape(3, 93, 93)
    rpath = tmp_path / "big.avro"
    write_rubin(rpath, schema, [rubin_record(schema, 0, big[SCI], big[TMP], big[DIF])])
    (rb,) = read_all(rpath)
    assert rb.stamps.shape == (1, 3, 30, 30) and rb.flags[0] & AlertFlag.CROPPED
    assert rb.stamps[0, DIF, 15, 15] == big[DIF, 46, 46]
    (rb93,) = read_all(rpath, cutout_sizes={"rubin": 93})
    np.testing.assert_array_equal(rb93.stamps[0], big)


# ----------------------------------------------------------------------
# Bad alerts never stop a run
# ----------------------------------------------------------------------


def _blocks(path):
    """(start, end) byte offsets of the data of each block of a container file."""
    from lsst.meas.rbnet.alerts.avro import _read_header, _read_long

    with open(path, "rb") as fo:
        fo.read(4)
        _read_header(fo)
        out = []
        while True:
            count = _read_long(fo)
            if count is None:
                return out
            size = _read_long(fo)
            start = fo.tell()
            out.append((start, start + size, count))
            fo.seek(start + size + 16)


def _three_block_file(tmp_path, sim63, codec="deflate"):
    path = tmp_path / "blocks.avro"
    with open(path, "wb") as fo:
        w = fastavro.write.Writer(fo, fastavro.parse_schema(ztf_schema()), codec=codec, sync_interval=1 << 30)
        for k, rec in enumerate(ztf_records(sim63[:6])):
            w.write(rec)
            if k % 2 == 1:
                w.flush()  # two alerts per block
        w.flush()
    blocks = _blocks(path)
    assert [b[2] for b in blocks] == [2, 2, 2]
    return path, blocks


def _flags(paths, **kw):
    return np.concatenate([b.flags for b in iter_alert_batches(paths, **kw)])


def test_corrupt_block_flags_its_alerts_and_reading_goes_on(tmp_path, sim63):
    path, blocks = _three_block_file(tmp_path, sim63)
    data = bytearray(path.read_bytes())
    start, end, _ = blocks[1]
    data[start + 10 : start + 60] = b"\x00" * 50  # the deflate stream of block 2 no longer decodes
    path.write_bytes(bytes(data))
    flags = _flags(path)
    assert len(flags) == 6
    assert [bool(f & AlertFlag.CORRUPT_RECORD) for f in flags] == [False, False, True, True, False, False]
    t = score_alerts(path)
    assert np.isfinite(t["score"][[0, 1, 4, 5]]).all() and np.isnan(t["score"][[2, 3]]).all()
    assert list(t["alertId"][[2, 3]]) == [-1, -1] and "CORRUPT_RECORD" in t["flagNames"][2]


def test_bad_sync_marker_resynchronises(tmp_path, sim63):
    path, blocks = _three_block_file(tmp_path, sim63, codec="null")
    data = bytearray(path.read_bytes())
    end = blocks[0][1]
    data[end : end + 16] = b"\xff" * 16  # the marker after block 1
    path.write_bytes(bytes(data))
    # The block itself decodes whole: only the marker was damaged, nothing is lost.
    assert [int(f) for f in _flags(path)] == [0] * 6
    start = blocks[0][0]
    data[start : start + 40] = b"\x00" * 40  # now the block is damaged too
    path.write_bytes(bytes(data))
    flags = _flags(path)
    assert len(flags) == 6
    assert [bool(f & AlertFlag.CORRUPT_RECORD) for f in flags] == [True, True, False, False, False, False]


def test_damaged_block_size_is_not_taken_for_truncation(tmp_path, sim63):
    path, blocks = _three_block_file(tmp_path, sim63, codec="null")
    data = bytearray(path.read_bytes())
    header = blocks[0][1] + 16  # block 2's header: record count, then byte size, then the data
    size_bytes = blocks[1][0] - (header + 1)
    for size in (b"\xfe", b"\xff"):  # zig-zag: a positive size far past the end, then a negative one
        data[header + 1 : blocks[1][0]] = size + b"\xff" * (size_bytes - 2) + b"\x7f"
        path.write_bytes(bytes(data))
        flags = _flags(path)
        assert [bool(f & AlertFlag.CORRUPT_RECORD) for f in flags] == [False, False, True, True, False, False]
        assert not any(f & AlertFlag.TRUNCATED for f in flags)


def test_truncated_file(tmp_path, sim63):
    path, blocks = _three_block_file(tmp_path, sim63)
    data = path.read_bytes()
    start, end, _ = blocks[2]
    path.write_bytes(data[: (start + end) // 2])
    flags = _flags(path)
    assert len(flags) == 6
    assert [bool(f & AlertFlag.TRUNCATED) for f in flags] == [False] * 4 + [True] * 2
    # Cut inside the header: one row for the file.
    path.write_bytes(data[:30])
    assert [int(f) for f in _flags(path)] == [int(AlertFlag.TRUNCATED)]


def test_missing_undecodable_and_wrong_shape_cutouts(tmp_path, sim63):
    s = sim63
    cube = io.BytesIO()
    fits.PrimaryHDU(np.zeros((2, 63, 63), np.float32)).writeto(cube)
    line = io.BytesIO()
    fits.PrimaryHDU(np.zeros(63, np.float32)).writeto(line)
    all_nan = np.full((63, 63), np.nan, np.float32)
    recs = [
        ztf_record(0, s[0, SCI], s[0, TMP], s[0, DIF]),
        ztf_record(1, None, s[1, TMP], s[1, DIF]),  # missing science cutout
        ztf_record(2, s[2, SCI], b"\x1f\x8bnot gzip at all", s[2, DIF]),  # undecodable template
        ztf_record(3, s[3, SCI], s[3, TMP], b"SIMPLE  = garbage"),  # undecodable difference (no END)
        ztf_record(4, s[4, SCI], s[4, TMP], gzip.compress(cube.getvalue())),  # a cube, not an image
        ztf_record(5, s[5, SCI], s[5, TMP], gzip.compress(line.getvalue())),  # 1-d
        ztf_record(6, s[6, SCI], s[6, TMP], all_nan),  # decodes, but no valid pixel
        ztf_record(7, s[7, SCI], s[7, TMP], s[7, DIF]),
    ]
    recs[1]["cutoutScience"] = None
    path = tmp_path / "bad_cutouts.avro"
    write_ztf(path, recs)
    t = score_alerts(path)
    assert len(t) == 8
    expect = {
        1: AlertFlag.MISSING_CUTOUT,
        2: AlertFlag.BAD_CUTOUT,
        3: AlertFlag.BAD_CUTOUT,
        4: AlertFlag.WRONG_SHAPE,
        5: AlertFlag.WRONG_SHAPE,
        6: AlertFlag.NO_VALID_PIXELS,
    }
    for row, bit in expect.items():
        assert t["flags"][row] & bit, (row, t["flagNames"][row])
        assert t["flags"][row] & AlertFlag.NOT_SCORED and np.isnan(t["score"][row])
        assert t["alertId"][row] == 2_000_000_000_000_000 + row  # the ids survive a bad cutout
    assert np.isfinite(t["score"][[0, 7]]).all() and (t["flags"][[0, 7]] & AlertFlag.NOT_SCORED == 0).all()
    (b,) = read_all(path)
    assert np.isnan(b.science[1]).all() and np.isnan(b.template[2]).all()


def test_unknown_schema_version_and_unreadable_files(tmp_path, sim30):
    schema = rubin_schema()
    rec = rubin_record(schema, 0, *sim30[0, [SCI, TMP, DIF]])
    good = confluent(schema, rec)
    unknown = confluent(schema, rec, schema_id=4242)  # no shipped schema has this id
    truncated = good[: len(good) // 2]
    text = tmp_path / "README"
    text.write_text("this is not an alert file\n" * 10)
    other = tmp_path / "other.avro"  # an Avro file of some other kind of record
    with open(other, "wb") as fo:
        fastavro.writer(
            fo,
            {"type": "record", "name": "thing", "fields": [{"name": "a", "type": "int"}]},
            [{"a": 1}, {"a": 2}],
        )
    paths = []
    for name, data in (("good.bin", good), ("unknown.bin", unknown), ("cut.bin", truncated)):
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    flags = _flags(paths + [str(text), str(other)])
    assert len(flags) == 6
    assert flags[0] == 0
    assert flags[1] & AlertFlag.UNKNOWN_SCHEMA
    assert flags[2] & (AlertFlag.TRUNCATED | AlertFlag.CORRUPT_RECORD)
    assert flags[3] & AlertFlag.UNREADABLE_FILE
    assert all(f & AlertFlag.UNKNOWN_SCHEMA for f in flags[4:])


def test_corrupt_parquet_row_group(tmp_path, sim63):
    path = tmp_path / "fink.parquet"
    pq.write_table(_fink_ztf_table(sim63[:6]), path, row_group_size=3, compression="gzip")
    meta = pq.ParquetFile(path).metadata
    col = meta.row_group(1).column(0)
    data = bytearray(path.read_bytes())
    start = col.data_page_offset
    data[start : start + col.total_compressed_size] = b"\x07" * col.total_compressed_size
    path.write_bytes(bytes(data))
    flags = _flags(path, batch_size=2)
    assert len(flags) == 6
    assert [bool(f & AlertFlag.CORRUPT_RECORD) for f in flags] == [False] * 3 + [True] * 3


def test_batches_are_bounded(tmp_path, sim63):
    path = tmp_path / "many.avro"
    write_ztf(path, ztf_records(np.concatenate([sim63] * 3)))
    gen = iter_alert_batches(path, batch_size=5)
    first = next(gen)  # lazy: one batch decoded, not the file
    assert first.stamps.shape == (5, 3, 63, 63)
    assert [len(b) for b in gen] == [5] * 6 + [1]
    assert sum(len(b) for b in iter_alert_batches(path, batch_size=5, limit=12)) == 12
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_alert_batches(path, batch_size=0))


# ----------------------------------------------------------------------
# Scoring and the command
# ----------------------------------------------------------------------


def test_scores_match_score_triplets(tmp_path, sim63):
    from lsst.meas.rbnet import score_triplets

    path = tmp_path / "ztf.avro"
    write_ztf(path, ztf_records(sim63))
    t = score_alerts(path, batch_size=5)
    expected = score_triplets(sim63[:, SCI], sim63[:, TMP], sim63[:, DIF], batch_size=5)
    np.testing.assert_allclose(np.asarray(t["score"]), expected, rtol=1e-5, atol=1e-6)
    assert set(t.colnames) >= {"alertId", "objectId", "survey", "score", "flags", "modelVersion", "ztf_drb"}
    assert (np.asarray(t["survey"]) == "ztf").all() and len(set(t["modelVersion"])) == 1


def _read_table(path: Path) -> Table:
    if path.suffix == ".parquet":
        return Table(pq.read_table(path).to_pydict())
    return Table.read(path, format={".csv": "ascii.csv", ".ecsv": "ascii.ecsv"}[path.suffix])


@pytest.mark.parametrize("ext", ["parquet", "csv", "ecsv"])
def test_score_alerts_command(tmp_path, sim63, sim30, ext):
    from click.testing import CliRunner

    from lsst.meas.rbnet.cli import main

    ztf = tmp_path / "ztf.avro"
    write_ztf(ztf, ztf_records(sim63[:5]))
    schema = rubin_schema()
    rubin = tmp_path / "rubin.avro"
    write_rubin(rubin, schema, [rubin_record(schema, i, *sim30[i, [SCI, TMP, DIF]]) for i in range(3)])
    junk = tmp_path / "junk.avro"
    junk.write_bytes(b"Obj\x01" + b"\x02" * 10)
    out = tmp_path / f"scores.{ext}"
    res = CliRunner().invoke(
        main,
        [
            "score-alerts",
            str(ztf),
            str(junk),
            str(rubin),
            "--out",
            str(out),
            "--batch-size",
            "2",
            "--compare",
        ],
    )
    assert res.exit_code == 0, res.output
    t = _read_table(out)
    assert len(t) == 9
    assert [str(s) for s in t["survey"]][:5] == ["ztf"] * 5 and [str(s) for s in t["survey"]][6:] == [
        "rubin"
    ] * 3
    assert {"ztf_drb", "ztf_rb", "rubin_reliability", "modelVersion", "flagNames"} <= set(t.colnames)
    assert np.isfinite(np.asarray(t["score"], dtype=float)[[0, 1, 2, 3, 4, 6, 7, 8]]).all()
    assert np.isnan(float(t["score"][5])) and int(t["flags"][5]) & AlertFlag.NOT_SCORED
    assert "8 of 9 alerts scored" in res.output
    assert "ROC-AUC" in res.output
    res = CliRunner().invoke(main, ["score-alerts", str(ztf), "--out", str(out), "--limit", "2"])
    assert res.exit_code == 0, res.output
    assert len(_read_table(out)) == 2


def test_score_alerts_command_fails_only_when_nothing_scored(tmp_path):
    from click.testing import CliRunner

    from lsst.meas.rbnet.cli import main

    junk = tmp_path / "junk.avro"
    junk.write_bytes(b"Obj\x01" + b"\x02" * 10)
    out = tmp_path / "scores.parquet"
    res = CliRunner().invoke(main, ["score-alerts", str(junk), "--out", str(out)])
    assert res.exit_code != 0
    assert "TRUNCATED" in res.output or "CORRUPT_RECORD" in res.output
    assert len(_read_table(out)) == 1  # the row is written all the same
    res = CliRunner().invoke(main, ["score-alerts", str(junk), "--out", str(tmp_path / "x.txt")])
    assert res.exit_code != 0 and ".parquet" in res.output
    bad_model = tmp_path / "model.safetensors"
    bad_model.write_bytes(b"not a model package")
    res = CliRunner().invoke(
        main, ["score-alerts", str(junk), "--out", str(tmp_path / "y.csv"), "--model", str(bad_model)]
    )
    assert res.exit_code != 0 and "--model" in res.output and not (tmp_path / "y.csv").exists()


# ----------------------------------------------------------------------
# Real cutouts (../shared/realdata): shapes, units and NaN round-trip
# ----------------------------------------------------------------------


def _realdata(name):
    path = REALDATA / name
    if not path.is_file():
        pytest.skip(f"real cutouts not found: {name} is not in ../shared/realdata beside the checkout")
    return np.load(path, allow_pickle=False)


@pytest.mark.parametrize("name", ["ztf_alerts_63.npz", "ztf_alerts_edge.npz"])
def test_real_ztf_cutouts_round_trip(tmp_path, name):
    d = _realdata(name)
    n = min(40, len(d["triplets"]))
    trip = d["triplets"][:n]  # (N, 3, 63, 63) in the order science, template, difference
    recs = []
    for i in range(n):
        h, w = int(d["orig_h"][i]), int(d["orig_w"][i])
        sci, tmp, dif = (trip[i, k, :h, :w] for k in range(3))
        rec = ztf_record(i, sci, tmp, dif, xpos=None, ypos=None, rb=float(d["rb"][i]), drb=float(d["drb"][i]))
        rec["candid"] = int(d["alert_id"][i])
        rec["objectId"] = str(d["object_id"][i])
        recs.append(rec)
    path = tmp_path / "real.avro"
    write_ztf(path, recs)
    batches = read_all(path, batch_size=16)
    stamps = np.concatenate([b.stamps for b in batches])
    table = Table(np.concatenate([b.table.as_array() for b in batches]))
    assert stamps.shape == (n, 3, 63, 63)
    # Padded on the high side (no position given), as the file stores them; NaN where the survey had none.
    np.testing.assert_array_equal(stamps[:, SCI], trip[:, 0])
    np.testing.assert_array_equal(stamps[:, TMP], trip[:, 1])
    np.testing.assert_array_equal(stamps[:, DIF], trip[:, 2])
    padded = (d["orig_h"][:n] < 63) | (d["orig_w"][:n] < 63)
    np.testing.assert_array_equal((table["flags"] & AlertFlag.PADDED) != 0, padded)
    has_nan = np.isnan(trip.reshape(n, -1)).any(axis=1) & ~padded
    assert has_nan.any() or padded.any()  # the real cutouts do exercise NaN handling
    # (a padded cutout's own NaN cannot be told from the file's padding, so those rows are left out)
    nan_flag = (np.asarray(table["flags"]) & AlertFlag.NAN_PIXELS) != 0
    np.testing.assert_array_equal(nan_flag[~padded], has_nan[~padded])
    assert [str(x) for x in table["alertId"]] == [str(x) for x in d["alert_id"][:n]]
    np.testing.assert_allclose(table["ztf_drb"], d["drb"][:n].astype(np.float32), equal_nan=True)
    t = score_alerts(path)
    # NaN pixels are filled by the scorer: every alert with a valid pixel in each cutout is scored.
    any_valid = np.isfinite(trip.reshape(n, 3, -1)).any(axis=2).all(axis=1)
    np.testing.assert_array_equal(np.isfinite(t["score"]), any_valid)


@pytest.mark.parametrize("name", ["rubin_alerts_30.npz", "rubin_alerts_large.npz"])
def test_real_rubin_cutouts_round_trip(tmp_path, name):
    d = _realdata(name)
    trip = d["triplets"]
    n, _, H, W = trip.shape
    schema = rubin_schema()
    recs = []
    for i in range(n):
        h, w = int(d["orig_h"][i]), int(d["orig_w"][i])
        rec = rubin_record(
            schema, i, *(trip[i, k, :h, :w] for k in range(3)), reliability=float(d["score"][i])
        )
        rec["diaSource"]["diaSourceId"] = int(d["alert_id"][i])
        recs.append(rec)
    path = tmp_path / "real.avro"
    write_rubin(path, schema, recs)
    (b,) = read_all(path, cutout_sizes={"rubin": H})
    assert b.unit == "nJy" and b.stamps.shape == (n, 3, H, W)
    for k, ch in enumerate((SCI, TMP, DIF)):
        np.testing.assert_array_equal(b.stamps[:, ch], trip[:, k])  # nJy values unchanged, NaN kept
    np.testing.assert_allclose(b.table["rubin_reliability"], d["score"].astype(np.float32))
    (b30,) = read_all(path)
    assert b30.stamps.shape == (n, 3, 30, 30)
    t = score_alerts(path)
    assert np.isfinite(t["score"]).all() and ((t["score"] >= 0) & (t["score"] <= 1)).all()
