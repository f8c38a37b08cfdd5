"""TensorBoard event files written by hand, so that exporting needs neither tensorboard nor protobuf.

An event file is a TFRecord file: each record is

    uint64 length (little-endian) | uint32 masked crc32c(length bytes) | data | uint32 masked crc32c(data)

with mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2^32), and each record's data is one serialized
`tensorflow.Event`:

    Event    wall_time double = 1, step int64 = 2, file_version string = 3, summary Summary = 5
    Summary  value repeated Value = 1
    Value    tag string = 1, simple_value float = 2

The first record carries only the file version (`brain.Event:2`); TensorBoard reads `simple_value` as a
scalar.
Fields are written in field-number order and a zero step is left out (proto3's canonical encoding), so equal
inputs give equal bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence

FILE_VERSION = "brain.Event:2"
_POLY = 0x82F63B78  # crc32c (Castagnoli), bit-reversed
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


def _crc_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_TABLE = _crc_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """The crc32c (Castagnoli) of `data`, continuing from `crc` (the value of the bytes before it, 0: none).

    Table-driven, one byte at a time (a few MB/s: event files of an export are kilobytes).
    data: the bytes; crc: a previous result to extend.
    """
    table = _TABLE
    c = crc ^ _U32
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ _U32


def masked_crc32c(data: bytes) -> int:
    """The masked crc32c TFRecord stores (a crc of data holding crcs would otherwise be weak).

    data: the bytes checked.
    """
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + _MASK_DELTA) & _U32


def record(data: bytes) -> bytes:
    """One TFRecord: length, its masked crc, the data, the data's masked crc.

    data: the record's payload (a serialized Event).
    """
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def varint(n: int) -> bytes:
    """Protocol-buffer varint of `n`; a negative int64 as its 64-bit two's complement (ten bytes).

    n: an integer in the int64 or uint64 range.
    """
    n &= _U64
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _pack_float32(value: float) -> bytes:
    """`value` as a little-endian float32, rounded to nearest; beyond float32's range, an infinity."""
    try:
        return struct.pack("<f", value)
    except OverflowError:
        return struct.pack("<f", math.copysign(math.inf, value))


def scalar_value(tag: str, value: float) -> bytes:
    """A serialized `Summary.Value` holding `simple_value` (float32: rounded to nearest).

    tag: the scalar's name (UTF-8); value: its value.
    """
    tag_bytes = tag.encode("utf-8", "backslashreplace")
    return _field(1, tag_bytes) + varint(2 << 3 | 5) + _pack_float32(float(value))


def event(
    wall_time: float,
    step: int = 0,
    *,
    file_version: str | None = None,
    values: Sequence[tuple[str, float]] = (),
) -> bytes:
    """A serialized `Event`: its time, step, and either the file version or a summary of scalars.

    wall_time: seconds since the epoch; step: the training step; file_version: set in a file's first event;
    values: (tag, value) scalars of the summary (none: no summary field).
    """
    out = varint(1 << 3 | 1) + struct.pack("<d", float(wall_time))
    if step:
        out += varint(2 << 3 | 0) + varint(int(step))
    if file_version is not None:
        out += _field(3, file_version.encode("utf-8"))
    if values:
        out += _field(5, b"".join(_field(1, scalar_value(tag, v)) for tag, v in values))
    return out


def event_file(wall_time: float, summaries: Iterable[tuple[int, Sequence[tuple[str, float]]]]) -> bytes:
    """The bytes of a whole event file: the version record, then one event per (step, scalars) in order.

    wall_time: the time every event carries; summaries: (step, [(tag, value), ...]) per event.
    """
    parts = [record(event(wall_time, file_version=FILE_VERSION))]
    parts.extend(record(event(wall_time, step, values=values)) for step, values in summaries)
    return b"".join(parts)
