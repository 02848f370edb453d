# This file is part of meas_rbnet.
"""Inputs: files, directories and glob patterns, mixed; each file's format from its first bytes.

Formats (whatever the file name):

- Avro container file (``Obj\\x01``): ZTF or Rubin alerts, one or many;
- Confluent wire-format message (a zero byte, a schema id, an Avro body): one Rubin alert;
- Parquet (``PAR1``): a broker export;
- tar archive, optionally gzip/bzip2/xz-compressed (ZTF's nightly ``.tar.gz``
  files): its members are read in order as any of the above, streaming.

A directory stands for the files below it (recursively, sorted by path; names
starting with ``.`` or ``_`` are left out, as are files of no known format, such
as the ``_SUCCESS`` markers of Spark exports). A glob pattern stands for its
matches, sorted (``**`` recurses). A named file of no known format gives one
`AlertFlag.UNREADABLE_FILE` row.
"""

from __future__ import annotations

__all__ = ["expand_inputs", "iter_messages", "iter_raw_alerts", "sniff_format", "sniff_survey"]

import glob
import io
import os
import tarfile
from collections.abc import Iterable, Iterator
from typing import IO

from .avro import AVRO_MAGIC, _decoder_for_schema_json, _read_header, decode_confluent, rubin_schema_ids
from .flags import AlertFlag
from .parquet import iter_parquet, parquet_layout
from .surveys import RawAlert, failure

_GLOB_CHARS = set("*?[")
_PARQUET_MAGIC = b"PAR1"
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def sniff_format(head: bytes) -> str | None:
    """``"avro"``, ``"confluent"``, ``"parquet"``, ``"tar"`` or None from a file's first 512 bytes."""
    if head.startswith(AVRO_MAGIC):
        return "avro"
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    if head.startswith(_COMPRESSED_MAGIC) or (len(head) >= 262 and head[257:262] == b"ustar"):
        return "tar"
    if len(head) >= 5 and head[0] == 0:
        return "confluent"
    return None


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[tuple[str, bool]]:
    """Files named by ``paths``, in order, each with whether it was named explicitly.

    Raises
    ------
    FileNotFoundError
        If a path does not exist or a glob pattern matches nothing.
    """
    out: list[tuple[str, bool]] = []
    for p in paths:
        p = os.fspath(p)
        if _GLOB_CHARS & set(p) and not os.path.exists(p):
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                raise FileNotFoundError(f"No file matches the pattern {p!r}.")
            for m in matches:
                out.extend(_expand_one(m, explicit=False))
        elif os.path.exists(p):
            out.extend(_expand_one(p, explicit=True))
        else:
            raise FileNotFoundError(f"Input {p!r} does not exist.")
    return out


def _expand_one(path: str, explicit: bool) -> list[tuple[str, bool]]:
    if not os.path.isdir(path):
        return [(path, explicit)]
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        files.extend(os.path.join(root, n) for n in names if not n.startswith((".", "_")))
    return [(f, False) for f in sorted(files)]


def sniff_survey(path: str) -> str | None:
    """The survey of a file's alerts from its header alone (None if unknown or unreadable)."""
    try:
        with open(path, "rb") as fo:
            head = fo.read(512)
            kind = sniff_format(head)
            fo.seek(0)
            return _survey_of_stream(fo, kind)
    except Exception:  # a sniff only decides output columns; the read reports any problem
        return None


def _survey_of_stream(fo: IO[bytes], kind: str | None) -> str | None:
    if kind == "avro":
        fo.seek(4)
        meta, _ = _read_header(fo)
        return _decoder_for_schema_json(meta["avro.schema"].decode("utf-8")).survey or None
    if kind == "confluent":
        fo.seek(1)
        return "rubin" if int.from_bytes(fo.read(4), "big") in rubin_schema_ids() else None
    if kind == "parquet":
        return parquet_layout(fo)
    if kind == "tar":
        with tarfile.open(fileobj=fo, mode="r|*") as tar:
            for member in tar:
                if member.isfile() and not os.path.basename(member.name).startswith((".", "_")):
                    data = tar.extractfile(member).read()
                    return _survey_of_stream(io.BytesIO(data), sniff_format(data[:512]))
    return None


def _iter_stream(fo: IO[bytes], kind: str | None, source: str, batch_size: int, explicit: bool):
    from .avro import iter_container

    if kind == "avro":
        yield from iter_container(fo, source)
    elif kind == "parquet":
        yield from iter_parquet(fo, source, batch_size)
    elif kind == "confluent":
        yield decode_confluent(fo.read(), source)
    elif kind == "tar":
        try:
            tar = tarfile.open(fileobj=fo, mode="r|*")
        except (tarfile.TarError, EOFError, OSError):
            # Compressed, but not a tar archive (or its first member is damaged).
            yield failure(AlertFlag.UNREADABLE_FILE, source)
            return
        try:
            with tar:
                for member in tar:
                    if not member.isfile() or os.path.basename(member.name).startswith((".", "_")):
                        continue
                    data = tar.extractfile(member).read()
                    sub = sniff_format(data[:512])
                    if sub in (None, "tar"):
                        continue  # a README or checksum file inside the archive
                    yield from _iter_stream(
                        io.BytesIO(data), sub, f"{source}:{member.name}", batch_size, False
                    )
        except (tarfile.TarError, EOFError, OSError):
            yield failure(AlertFlag.TRUNCATED, source)
    elif explicit:
        yield failure(AlertFlag.UNREADABLE_FILE, source)


def iter_raw_alerts(
    paths: Iterable[str | os.PathLike], batch_size: int = 1024, files: list[tuple[str, bool]] | None = None
) -> Iterator[RawAlert]:
    """Every alert of the inputs, in order, as `RawAlert` (cutouts still encoded).

    ``files``, if given, is ``expand_inputs(paths)`` already made (``paths`` is then not read).
    """
    for path, explicit in expand_inputs(paths) if files is None else files:
        source = path
        try:
            fo = open(path, "rb")
        except OSError:
            yield failure(AlertFlag.UNREADABLE_FILE, source)
            continue
        with fo:
            head = fo.read(512)
            fo.seek(0)
            yield from _iter_stream(fo, sniff_format(head), source, batch_size, explicit)


def iter_messages(messages: Iterable[bytes], source: str = "message") -> Iterator[RawAlert]:
    """Alerts of in-memory payloads (e.g. Kafka message values): Confluent wire format or Avro containers."""
    for i, data in enumerate(messages):
        kind = sniff_format(bytes(data[:512]))
        if kind in ("avro", "confluent", "parquet"):
            yield from _iter_stream(io.BytesIO(data), kind, f"{source}[{i}]", 1024, True)
        else:
            yield failure(AlertFlag.UNREADABLE_FILE, f"{source}[{i}]")
