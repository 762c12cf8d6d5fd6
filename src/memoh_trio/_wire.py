"""Protobuf wire format of the bulk messages, by hand: ``WriteRawChunk``, ``DataChunk`` and the
stdin-only ``ExecInput``; and the decoding of ``ListDirResponse``, whose 100,000 entries of a
large destination took betterproto2 1.3-1.7 s to parse (resume, dry runs).

Every byte of a migration travels in one of these messages (large files in ``WriteRawChunk``,
tar batches of small files as ``ExecInput.stdin_data``). betterproto2 encodes and parses
a ``bytes`` field through several intermediate copies (measured: about 1.3 ms to encode and
0.8 ms to parse a 1 MiB chunk, against 0.07 ms for one copy of it), which made the codec the
largest cost of a large-file copy. The functions here produce exactly the bytes betterproto2
produces (proto3 canonical form: fields in number order, default values omitted) and accept
everything a conforming encoder may send (any field order, repeated fields — the last one wins —
and unknown fields, which are skipped), without copying the payload: decoded ``data`` is a
``memoryview`` into the received message.

The generated stubs stay the reference: ``tests/test_wire.py`` checks both directions against
them on random messages. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ._dirindex import DirIndex, Entry

__all__ = [
    "DecodedWriteRawChunk",
    "ListDirEntries",
    "ListDirIndex",
    "WireError",
    "decode_data_chunk",
    "decode_list_dir",
    "decode_write_raw_chunk",
    "encode_data_chunk",
    "encode_exec_stdin",
    "encode_exec_stdin_head",
    "encode_write_raw_chunk",
    "iter_list_dir",
]

_WIRE_VARINT = 0
_WIRE_I64 = 1
_WIRE_LEN = 2
_WIRE_I32 = 5
_U64 = (1 << 64) - 1


class WireError(ValueError):
    """The bytes are not a valid protobuf encoding of the expected message."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _nbytes(data: bytes | memoryview) -> int:
    """Length in bytes (a memoryview's ``len`` counts items, which may be wider than a byte)."""
    return data.nbytes if isinstance(data, memoryview) else len(data)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes")


def _value(buf: memoryview, pos: int, key: int) -> tuple[int, int]:
    """The value of the field ``key`` at ``pos`` and the position after it; for a
    length-delimited field its length and the position of its bytes (checked to be there)."""
    wire_type = key & 7
    if key >> 3 == 0:
        raise WireError("field number 0")
    if wire_type in (_WIRE_VARINT, _WIRE_LEN):
        byte = buf[pos] if pos < len(buf) else 0x80
        value, pos = (byte, pos + 1) if byte < 0x80 else _read_varint(buf, pos)
        if wire_type == _WIRE_LEN and value > len(buf) - pos:
            raise WireError("length-delimited field runs past the end of the message")
        return value, pos
    if wire_type in (_WIRE_I64, _WIRE_I32):
        pos += 8 if wire_type == _WIRE_I64 else 4
        if pos > len(buf):
            raise WireError("truncated fixed-width field")
        return 0, pos
    raise WireError(f"unsupported wire type {wire_type}")


def _fields(message: bytes | bytearray | memoryview) -> dict[int, int | memoryview]:
    """Last value of every field: ints for varints, views for length-delimited fields.

    Fixed-width fields are checked and skipped (neither message has one).
    """
    buf = memoryview(message).cast("B")
    pos = 0
    end = len(buf)
    out: dict[int, int | memoryview] = {}
    while pos < end:
        key, pos = _read_varint(buf, pos)
        value, pos = _value(buf, pos, key)
        wire_type = key & 7
        if wire_type == _WIRE_VARINT:
            out[key >> 3] = value
        elif wire_type == _WIRE_LEN:
            out[key >> 3] = buf[pos : pos + value]
            pos += value
    return out


def _expect_len(value: int | memoryview | None, name: str) -> memoryview | None:
    if value is None or isinstance(value, memoryview):
        return value
    raise WireError(f"field {name} has the wrong wire type")


def _expect_varint(value: int | memoryview | None, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    raise WireError(f"field {name} has the wrong wire type")


# ----------------------------------------------------------------------------------------------
# WriteRawChunk { string path = 1; bytes data = 2; bool abort = 3; }


def encode_write_raw_chunk_head(path: str, data_len: int) -> bytes:
    """Everything of an encoded WriteRawChunk before its ``data`` bytes (no abort flag).

    ``head + data`` is the whole message; callers that can send the two separately avoid a copy.
    """
    out = b""
    if path:
        raw = path.encode("utf-8")
        out = b"\x0a" + _varint(len(raw)) + raw
    if data_len:
        out += b"\x12" + _varint(data_len)
    return out


def encode_write_raw_chunk(
    path: str = "", data: bytes | memoryview = b"", abort: bool = False
) -> bytes:
    """The encoded message, byte for byte what betterproto2 produces."""
    out = encode_write_raw_chunk_head(path, _nbytes(data)) + data
    if abort:
        out += b"\x18\x01"
    return out


@dataclass(frozen=True)
class DecodedWriteRawChunk:
    path: str
    data: memoryview  # a view into the received message: no copy
    abort: bool


def decode_write_raw_chunk(message: bytes | bytearray | memoryview) -> DecodedWriteRawChunk:
    """Parse a WriteRawChunk; raises WireError (or UnicodeDecodeError for a non-UTF-8 path)."""
    fields = _fields(message)
    path = _expect_len(fields.get(1), "path")
    data = _expect_len(fields.get(2), "data")
    abort = _expect_varint(fields.get(3), "abort")
    return DecodedWriteRawChunk(
        path=str(path, "utf-8") if path is not None else "",
        data=data if data is not None else memoryview(b""),
        abort=abort != 0,
    )


# ----------------------------------------------------------------------------------------------
# DataChunk { bytes data = 1; }


def encode_data_chunk_head(data_len: int) -> bytes:
    """The bytes of an encoded DataChunk before its ``data``."""
    return b"\x0a" + _varint(data_len) if data_len else b""


def encode_data_chunk(data: bytes | memoryview) -> bytes:
    return encode_data_chunk_head(_nbytes(data)) + data


def decode_data_chunk(message: bytes | bytearray | memoryview) -> memoryview:
    """The ``data`` of a DataChunk, as a view into ``message``."""
    data = _expect_len(_fields(message).get(1), "data")
    return data if data is not None else memoryview(b"")


# ----------------------------------------------------------------------------------------------
# ExecInput { string command = 1; string work_dir = 2; repeated string env = 3;
#             int32 timeout_seconds = 4; bytes stdin_data = 5; }  -- stdin only: the messages
# after the first (the command goes through the generated stub)


def encode_exec_stdin_head(data_len: int) -> bytes:
    """The bytes of an ``ExecInput(stdin_data=...)`` before its data."""
    return b"\x2a" + _varint(data_len) if data_len else b""


def encode_exec_stdin(data: bytes | memoryview) -> bytes:
    return encode_exec_stdin_head(_nbytes(data)) + data


# ----------------------------------------------------------------------------------------------
# ListDirResponse { repeated FileEntry entries = 1; }
# FileEntry { string path = 1; bool is_dir = 2; int64 size = 3; string mode = 4;
#             string mod_time = 5; }

class ListDirEntries:
    """A ListDir reply type that parses itself with :func:`decode_list_dir` (grpclib's codec
    calls ``FromString``): the client asks for this instead of the generated
    ``ListDirResponse``."""

    __slots__ = ("entries",)

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries

    @classmethod
    def FromString(cls, data: bytes) -> ListDirEntries:
        return cls(decode_list_dir(data))


class ListDirIndex:
    """A ListDir reply decoded straight into a compact :class:`memoh_trio._dirindex.DirIndex`
    (no object per entry: a large destination's listing for resume)."""

    __slots__ = ("index",)

    def __init__(self, index: DirIndex) -> None:
        self.index = index

    @classmethod
    def FromString(cls, data: bytes) -> ListDirIndex:
        return cls(DirIndex.from_entries(iter_list_dir(data)))


def decode_list_dir(message: bytes | bytearray | memoryview) -> list[Entry]:
    """The entries of a ListDirResponse, in order; raises WireError (or UnicodeDecodeError
    for a string that is not UTF-8, as betterproto2 does)."""
    return list(iter_list_dir(message))


def iter_list_dir(message: bytes | bytearray | memoryview) -> Iterator[Entry]:
    """:func:`decode_list_dir` one entry at a time."""
    buf = memoryview(message).cast("B")
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        length, pos = _value(buf, pos, key)
        if key == 0x0A:  # entries, length-delimited
            yield _file_entry(buf[pos : pos + length])
        elif key == 0x08:  # entries as a varint (fixed-width: skipped, as in _fields)
            raise WireError("field entries of ListDirResponse has the wrong wire type")
        if key & 7 == _WIRE_LEN:
            pos += length


def _file_entry(buf: memoryview) -> Entry:
    path = mode = mod_time = ""
    is_dir = False
    size = 0
    pos, end = 0, len(buf)
    while pos < end:
        key = buf[pos]
        key, pos = (key, pos + 1) if key < 0x80 else _read_varint(buf, pos)
        value, pos = _value(buf, pos, key)
        wire_type = key & 7
        if wire_type == _WIRE_LEN:
            if key == 0x0A:
                path = str(buf[pos : pos + value], "utf-8")
            elif key == 0x22:
                mode = str(buf[pos : pos + value], "utf-8")
            elif key == 0x2A:
                mod_time = str(buf[pos : pos + value], "utf-8")
            elif key >> 3 in (2, 3):
                raise WireError(f"field {key >> 3} of FileEntry has the wrong wire type")
            pos += value
        elif wire_type == _WIRE_VARINT:
            if key == 0x10:
                is_dir = value != 0
            elif key == 0x18:  # int64: two's complement in 64 bits
                value &= _U64
                size = value - (1 << 64) if value >> 63 else value
            elif key >> 3 in (1, 4, 5):
                raise WireError(f"field {key >> 3} of FileEntry has the wrong wire type")
        # fixed-width: checked by _value and skipped, whatever its number (as in _fields)
    return path, is_dir, size, mode, mod_time
