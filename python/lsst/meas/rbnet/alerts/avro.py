# This file is part of meas_rbnet.
"""Avro alert packets: container files read block by block, and Confluent wire-format messages.

Container files (``Obj\\x01`` magic, the writer schema in the header, then blocks
of records each followed by a 16-byte sync marker) are parsed here rather than
by `fastavro.reader`, so that a damaged file loses only what is damaged:

- a block whose data cannot be decompressed, or whose sync marker is wrong and
  whose records do not decode exactly, gives one `AlertFlag.CORRUPT_RECORD` row
  per record its header announced (one row if that count is implausible), and
  reading resumes at the next block whose own marker is intact (a damaged marker
  alone loses nothing; a damaged block size is told from a truncated file by
  looking for a later marker);
- a record that fails to decode flags itself and the rest of its block (the
  record boundaries after it are lost);
- a file that ends inside a block gives `AlertFlag.TRUNCATED` rows.

Records are decoded with `fastavro.schemaless_reader` through a *projected*
reader schema holding only the fields in `surveys.WANTED`: the light curves
(``prv_candidates``, ``prvDiaSources``...) are skipped, not built.

Confluent wire-format messages (Kafka payloads saved as files) are a zero byte,
a 4-byte big-endian schema id and the Avro body. Rubin's schema ids are those of
`lsst.alert.packet.Schema.get_schema_id` (``100 * major + minor``, e.g. 1101 for
v11.1); every schema that ``lsst-alert-packet`` ships is known (`rubin_schema_ids`):
with lsst-alert-packet 30.2026.2700, 3.0, 4.0, 5.0, 6.0, 6.1, 7.0-7.4, 8.0, 9.0,
10.0, 11.0 and 11.1 (the latest). Schemas before 6.1 have no science cutout;
up to 7.4 the alert's top-level identifier is ``alertId``, from 8.0 on
``diaSourceId`` (the reader takes ``diaSource.diaSourceId`` in all of them);
``reliability`` is in ``diaSource`` from 5.0 on.
"""

from __future__ import annotations

__all__ = [
    "AVRO_MAGIC",
    "iter_container",
    "decode_confluent",
    "project_schema",
    "rubin_schema_ids",
]

import bz2
import functools
import io
import json
import lzma
import zlib
from collections.abc import Iterator
from typing import IO, Any

import fastavro

from .flags import AlertFlag
from .surveys import WANTED, RawAlert, failure, layout_of_fields, survey_spec, to_raw_alert

AVRO_MAGIC = b"Obj\x01"
_SYNC_SIZE = 16
#: A block header announcing more records than this is taken as corrupt (one row, not millions).
_MAX_BLOCK_RECORDS = 1_000_000
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


class _Truncated(Exception):
    pass


def _read_long(fo: IO[bytes]) -> int | None:
    """A zig-zag varint; None at a clean end of file."""
    shift = 0
    result = 0
    first = True
    while True:
        b = fo.read(1)
        if not b:
            if first:
                return None
            raise _Truncated
        first = False
        c = b[0]
        result |= (c & 0x7F) << shift
        if not c & 0x80:
            return (result >> 1) ^ -(result & 1)
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _read_bytes(fo: IO[bytes]) -> bytes:
    n = _read_long(fo)
    if n is None:
        raise _Truncated
    data = fo.read(n)
    if len(data) != n:
        raise _Truncated
    return data


def _read_header(fo: IO[bytes]) -> tuple[dict[str, bytes], bytes]:
    """Metadata map and sync marker of a container file (after the magic)."""
    meta: dict[str, bytes] = {}
    while True:
        count = _read_long(fo)
        if count is None:
            raise _Truncated
        if count == 0:
            break
        if count < 0:  # a negative count is followed by the block's byte size
            count = -count
            _read_long(fo)
        for _ in range(count):
            key = _read_bytes(fo).decode("utf-8")
            meta[key] = _read_bytes(fo)
    sync = fo.read(_SYNC_SIZE)
    if len(sync) != _SYNC_SIZE:
        raise _Truncated
    return meta, sync


def _decompressor(codec: str):
    if codec == "null":
        return lambda data: data
    if codec == "deflate":
        return lambda data: zlib.decompress(data, -15)
    if codec == "bzip2":
        return bz2.decompress
    if codec == "xz":
        return lzma.decompress
    if codec in ("snappy", "zstandard"):
        try:
            import cramjam
        except ImportError:
            return None
        if codec == "snappy":  # raw snappy data followed by a 4-byte CRC32 of the uncompressed data
            return lambda data: bytes(cramjam.snappy.decompress_raw(data[:-4]))
        return lambda data: bytes(cramjam.zstd.decompress(data))
    return None


# ----------------------------------------------------------------------
# Schema projection
# ----------------------------------------------------------------------


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _collect_named(schema: Any, namespace: str | None, named: dict[str, Any]) -> None:
    """Every named type (record, enum, fixed) of a writer schema by full name."""
    if isinstance(schema, list):
        for s in schema:
            _collect_named(s, namespace, named)
    elif isinstance(schema, dict):
        t = schema.get("type")
        if t in ("record", "error", "enum", "fixed"):
            full = _full_name(schema["name"], schema.get("namespace", namespace))
            named.setdefault(full, (schema, full.rpartition(".")[0] or None))
            if t in ("record", "error"):
                for f in schema.get("fields", []):
                    _collect_named(f["type"], full.rpartition(".")[0] or None, named)
        elif t == "array":
            _collect_named(schema["items"], namespace, named)
        elif t == "map":
            _collect_named(schema["values"], namespace, named)
        elif isinstance(t, (dict, list)):
            _collect_named(t, namespace, named)


def project_schema(schema: dict, wanted: dict[str, Any]) -> dict:
    """A reader schema keeping only the ``wanted`` fields of a writer schema (by name, recursively).

    ``wanted`` maps a field name to True (keep it whole) or to a dict (keep
    those sub-fields of a record, or of the records in a union). Names in
    ``wanted`` that the writer lacks are ignored. Named types keep their full
    names, so Avro schema resolution matches them with the writer's.
    """
    named: dict[str, Any] = {}
    _collect_named(schema, None, named)
    defined: set[str] = set()

    def proj(s: Any, want: Any, namespace: str | None) -> Any:
        if isinstance(s, str):
            if s in _PRIMITIVES:
                return s
            full = _full_name(s, namespace)
            if full not in named:
                full = s
            if full in defined or full not in named:
                return full
            definition, ns = named[full]
            return proj(definition, want, ns)
        if isinstance(s, list):
            return [proj(b, want, namespace) for b in s]
        t = s.get("type")
        if t in ("record", "error"):
            full = _full_name(s["name"], s.get("namespace", namespace))
            if full in defined:
                return full
            defined.add(full)
            ns = full.rpartition(".")[0] or None
            fields = []
            for f in s.get("fields", []):
                sub = want.get(f["name"]) if isinstance(want, dict) else True
                if not sub:
                    continue
                out = {"name": f["name"], "type": proj(f["type"], sub if isinstance(sub, dict) else True, ns)}
                if "default" in f:
                    out["default"] = f["default"]
                fields.append(out)
            return {"type": "record", "name": full, "fields": fields}
        if t in ("enum", "fixed"):
            full = _full_name(s["name"], s.get("namespace", namespace))
            if full in defined:
                return full
            defined.add(full)
            out = {k: v for k, v in s.items() if k not in ("namespace", "doc")}
            out["name"] = full
            return out
        if t == "array":
            return {"type": "array", "items": proj(s["items"], want, namespace)}
        if t == "map":
            return {"type": "map", "values": proj(s["values"], want, namespace)}
        if isinstance(t, (dict, list)):
            return proj(t, want, namespace)
        return t

    return proj(schema, wanted, None)


class _Decoder:
    """Decodes records of one writer schema into `RawAlert` rows."""

    def __init__(self, writer_schema: dict, source_hint: str = ""):
        fields = (
            [f["name"] for f in writer_schema.get("fields", [])] if isinstance(writer_schema, dict) else []
        )
        self.layout = layout_of_fields(fields)
        self.spec = None
        if self.layout is not None:
            name = _full_name(writer_schema.get("name", ""), writer_schema.get("namespace"))
            ns = name.split(".", 1)[0] if "." in name else ""
            if self.layout == "rubin" or ns in ("", "lsst", "ztf"):
                survey = self.layout
            else:
                survey = ns  # another survey with ZTF's layout (e.g. pgir)
            self.spec = survey_spec(survey, self.layout)
            self.writer = fastavro.parse_schema(writer_schema, _write_hint=False, _force=True)
            self.reader = fastavro.parse_schema(
                project_schema(writer_schema, WANTED[self.layout]), _write_hint=False, _force=True
            )

    @property
    def survey(self) -> str:
        return "" if self.spec is None else self.spec.name

    def decode(self, fo: IO[bytes], source: str) -> RawAlert:
        rec = fastavro.schemaless_reader(fo, self.writer, self.reader)
        return to_raw_alert(self.spec, rec, source)


@functools.lru_cache(maxsize=64)
def _decoder_for_schema_json(text: str) -> _Decoder:
    return _Decoder(json.loads(text))


def iter_container(fo: IO[bytes], source: str) -> Iterator[RawAlert]:
    """Alerts of an Avro container file, one `RawAlert` per record (or per lost record).

    Parameters
    ----------
    fo : binary file object
        Positioned at the start of the file (the ``Obj\\x01`` magic).
    source : `str`
        Name of the input, for the ``source`` column.
    """
    if fo.read(4) != AVRO_MAGIC:
        yield failure(AlertFlag.UNREADABLE_FILE, source)
        return
    try:
        meta, sync = _read_header(fo)
        schema_text = meta["avro.schema"].decode("utf-8")
        decoder = _decoder_for_schema_json(schema_text)
    except _Truncated:
        yield failure(AlertFlag.TRUNCATED, source)
        return
    except (KeyError, ValueError, UnicodeDecodeError, fastavro.schema.SchemaParseException):
        yield failure(AlertFlag.CORRUPT_RECORD, source)
        return
    codec = meta.get("avro.codec", b"null").decode("ascii", "replace")
    decompress = _decompressor(codec)
    survey = decoder.survey
    here = fo.tell()
    file_size = fo.seek(0, io.SEEK_END)
    fo.seek(here)
    while True:
        block_start = fo.tell()
        try:
            count = _read_long(fo)
            if count is None:
                return  # clean end of file
            size = _read_long(fo)
        except _Truncated:
            yield failure(AlertFlag.TRUNCATED, source, survey)
            return
        except ValueError:
            count, size = -1, -1
        if not (0 <= count <= _MAX_BLOCK_RECORDS) or size is None or size < 0:
            # The record count stands if it is plausible; otherwise the block is one row.
            yield failure(AlertFlag.CORRUPT_RECORD, source, survey, count if 0 < count <= 10_000 else 1)
            if not _resync(fo, sync, block_start + 1):
                return
            continue
        if fo.tell() + size + _SYNC_SIZE > file_size:
            # Past the end of the file: a truncated last block, unless a later marker shows that the
            # size itself is damaged (then the block is corrupt and reading goes on after the marker).
            if _resync(fo, sync, block_start + 1):
                yield failure(AlertFlag.CORRUPT_RECORD, source, survey, max(count, 1))
                continue
            if count:
                yield failure(AlertFlag.TRUNCATED, source, survey, count)
            return
        data = fo.read(size)
        marker = fo.read(_SYNC_SIZE)
        if marker != sync:
            # Either the marker alone is damaged (the block decodes whole, to its last byte) or the
            # block is: then its records are lost and reading resumes at the next intact marker.
            rows = _decode_whole_block(decoder, decompress, data, count, source)
            if rows is not None:
                yield from rows
                continue
            if count:
                yield failure(AlertFlag.CORRUPT_RECORD, source, survey, count)
            after = fo.tell()
            if _is_block_start(fo, after, sync):
                continue  # the block's size was right: the next block follows the damaged marker
            if not _resync(fo, sync, block_start + 1):
                return
            continue
        if decoder.spec is None or decompress is None:
            bit = AlertFlag.UNKNOWN_SCHEMA if decoder.spec is None else AlertFlag.UNREADABLE_FILE
            if count:
                yield failure(bit, source, survey, count)
            continue
        try:
            body = io.BytesIO(decompress(data))
        except Exception:  # each codec raises its own error type
            if count:
                yield failure(AlertFlag.CORRUPT_RECORD, source, survey, count)
            continue
        for i in range(count):
            try:
                yield decoder.decode(body, source)
            except Exception:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, IndexError...
                yield failure(AlertFlag.CORRUPT_RECORD, source, survey, count - i)
                break


def _decode_whole_block(decoder, decompress, data: bytes, count: int, source: str) -> list[RawAlert] | None:
    """All ``count`` records of a block if it decodes exactly, else None."""
    if decoder.spec is None or decompress is None:
        return None
    try:
        raw = decompress(data)
        body = io.BytesIO(raw)
        rows = [decoder.decode(body, source) for _ in range(count)]
    except Exception:  # any codec or decoding error means the block is damaged
        return None
    return rows if body.tell() == len(raw) else None


def _is_block_start(fo: IO[bytes], pos: int, sync: bytes) -> bool:
    """Whether a block whose own marker is intact starts at ``pos`` (or the file ends there); seeks back."""
    try:
        fo.seek(pos)
        count = _read_long(fo)
        if count is None:
            return True
        size = _read_long(fo)
        if not (0 <= count <= _MAX_BLOCK_RECORDS) or size is None or size < 0:
            return False
        fo.seek(size, io.SEEK_CUR)
        return fo.read(_SYNC_SIZE) == sync
    except (_Truncated, ValueError, OSError):
        return False
    finally:
        fo.seek(pos)


def _resync(fo: IO[bytes], sync: bytes, start: int) -> bool:
    """Move ``fo`` just past the next sync marker at or after ``start``; False if there is none."""
    fo.seek(start)
    tail = b""
    chunk_size = 1 << 20
    while True:
        chunk = fo.read(chunk_size)
        if not chunk:
            return False
        buf = tail + chunk
        i = buf.find(sync)
        if i >= 0:
            fo.seek(fo.tell() - len(buf) + i + _SYNC_SIZE)
            return True
        tail = buf[-(_SYNC_SIZE - 1) :]


# ----------------------------------------------------------------------
# Confluent wire format and the Rubin schemas of lsst-alert-packet
# ----------------------------------------------------------------------


@functools.cache
def rubin_schema_ids() -> dict[int, str]:
    """Schema id -> ``"major.minor"`` for every alert schema shipped by ``lsst-alert-packet``."""
    from lsst.alert.packet import get_schema_root

    root = get_schema_root()
    out = {}
    for major in root.iterdir():
        if not major.name.isdigit():
            continue
        for minor in major.iterdir():
            if minor.name.isdigit() and (minor / f"lsst.v{major.name}_{minor.name}.alert.avsc").is_file():
                out[100 * int(major.name) + int(minor.name)] = f"{major.name}.{minor.name}"
    return out


@functools.cache
def _rubin_decoder(schema_id: int) -> _Decoder:
    from lsst.alert.packet import Schema, get_schema_path

    major, minor = rubin_schema_ids()[schema_id].split(".")
    path = f"{get_schema_path(int(major), int(minor))}/lsst.v{major}_{minor}.alert.avsc"
    return _Decoder(Schema.from_file(path).definition)


def decode_confluent(message: bytes, source: str) -> RawAlert:
    """One Rubin alert from a Confluent wire-format message (magic 0, schema id, Avro body).

    An unknown schema id gives an `AlertFlag.UNKNOWN_SCHEMA` row; a body that
    does not decode with its schema a `AlertFlag.CORRUPT_RECORD` row, and one
    shorter than its schema needs a `AlertFlag.TRUNCATED` row.
    """
    if len(message) < 5 or message[0] != 0:
        return failure(AlertFlag.UNREADABLE_FILE, source)
    schema_id = int.from_bytes(message[1:5], "big")
    if schema_id not in rubin_schema_ids():
        return failure(AlertFlag.UNKNOWN_SCHEMA, source, "rubin")
    decoder = _rubin_decoder(schema_id)
    body = io.BytesIO(message)
    body.seek(5)
    try:
        raw = decoder.decode(body, source)
    except EOFError:
        return failure(AlertFlag.TRUNCATED, source, "rubin")
    except Exception:  # any decoding error of a damaged body
        return failure(AlertFlag.CORRUPT_RECORD, source, "rubin")
    return raw
