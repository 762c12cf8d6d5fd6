"""The hand-written codec of _wire against the generated betterproto2 stubs, in both directions.

Encoding must give exactly betterproto2's bytes; decoding must accept every conforming encoding
(any field order, repeated fields with the last one winning, unknown fields of every wire type)
and refuse malformed input with WireError, handing ``data`` out as a view into the input.
"""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memoh_trio._proto.mcpcontainer import (
    DataChunk,
    ExecInput,
    FileEntry,
    ListDirResponse,
    WriteRawChunk,
    WriteRawResponse,
)
from memoh_trio._wire import (
    DecodedWriteRawChunk,
    ListDirEntries,
    WireError,
    decode_data_chunk,
    decode_list_dir,
    decode_write_raw_chunk,
    encode_data_chunk,
    encode_data_chunk_head,
    encode_exec_stdin,
    encode_exec_stdin_head,
    encode_write_raw_chunk,
    encode_write_raw_chunk_head,
)

VARINT, I64, LEN, I32 = 0, 1, 2, 5
MAX_FIELD = 2**29 - 1
U64 = st.integers(0, 2**64 - 1)

#: One field on the wire: (field number, wire type, value). The value is an int for a varint,
#: the raw bytes otherwise (8 of them for I64, 4 for I32).
Field = tuple[int, int, int | bytes]


def _uvarint(value: int) -> bytes:
    """Base-128 varint, written independently of _wire (checked against betterproto2 below)."""
    assert value >= 0
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number: int, wire_type: int, value: int | bytes) -> bytes:
    key = _uvarint(number << 3 | wire_type)
    if wire_type == VARINT:
        assert isinstance(value, int)
        return key + _uvarint(value)
    assert isinstance(value, bytes)
    if wire_type == LEN:
        return key + _uvarint(len(value)) + value
    assert len(value) == (8 if wire_type == I64 else 4)
    return key + value


def _message(fields: list[Field]) -> bytes:
    return b"".join(_field(*f) for f in fields)


def _unknown(numbers: st.SearchStrategy[int]) -> st.SearchStrategy[Field]:
    return st.one_of(
        st.tuples(numbers, st.just(VARINT), U64),
        st.tuples(numbers, st.just(I64), st.binary(min_size=8, max_size=8)),
        st.tuples(numbers, st.just(LEN), st.binary(max_size=20)),
        st.tuples(numbers, st.just(I32), st.binary(min_size=4, max_size=4)),
    )


_WRITE_RAW_FIELDS: st.SearchStrategy[Field] = st.one_of(
    st.tuples(st.just(1), st.just(LEN), st.text().map(lambda s: s.encode("utf-8"))),
    st.tuples(st.just(2), st.just(LEN), st.binary(max_size=64)),
    st.tuples(st.just(3), st.just(VARINT), st.one_of(st.integers(0, 2), U64)),
    _unknown(st.integers(4, MAX_FIELD)),
)
_DATA_CHUNK_FIELDS: st.SearchStrategy[Field] = st.one_of(
    st.tuples(st.just(1), st.just(LEN), st.binary(max_size=64)),
    _unknown(st.integers(2, MAX_FIELD)),
)


def _last(fields: list[Field], number: int) -> int | bytes | None:
    values = [value for n, _, value in fields if n == number]
    return values[-1] if values else None


def _expected_write_raw(fields: list[Field]) -> tuple[str, bytes, bool]:
    path, data, abort = _last(fields, 1), _last(fields, 2), _last(fields, 3)
    assert path is None or isinstance(path, bytes)
    assert data is None or isinstance(data, bytes)
    assert abort is None or isinstance(abort, int)
    return (path or b"").decode("utf-8"), data or b"", bool(abort)


def _fields_of(decoded: DecodedWriteRawChunk) -> tuple[str, bytes, bool]:
    assert isinstance(decoded.data, memoryview)
    return decoded.path, bytes(decoded.data), decoded.abort


# ----------------------------------------------------------------------------------------------
# Encoding: byte for byte what betterproto2 produces


@settings(max_examples=300, deadline=None)
@given(st.text(), st.binary(max_size=300), st.booleans())
def test_encode_write_raw_chunk_matches_betterproto(path: str, data: bytes, abort: bool) -> None:
    reference = bytes(WriteRawChunk(path=path, data=data, abort=abort))
    assert encode_write_raw_chunk(path, data, abort) == reference
    assert encode_write_raw_chunk(path, memoryview(data), abort) == reference
    assert encode_write_raw_chunk(path=path, data=data, abort=abort) == reference


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_encode_data_chunk_matches_betterproto(data: bytes) -> None:
    reference = bytes(DataChunk(data=data))
    assert encode_data_chunk(data) == reference
    assert encode_data_chunk(memoryview(data)) == reference


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_encode_exec_stdin_matches_betterproto(data: bytes) -> None:
    reference = bytes(ExecInput(stdin_data=data))
    assert encode_exec_stdin(data) == reference
    assert encode_exec_stdin(memoryview(data)) == reference


def test_encode_defaults_are_empty() -> None:
    assert encode_write_raw_chunk() == b"" == bytes(WriteRawChunk())
    assert encode_write_raw_chunk(abort=True) == b"\x18\x01" == bytes(WriteRawChunk(abort=True))
    assert encode_data_chunk(b"") == b"" == bytes(DataChunk())
    assert encode_write_raw_chunk_head("", 0) == b""
    assert encode_data_chunk_head(0) == b""


# Lengths on both sides of every varint-width boundary up to three bytes.
_LENGTHS = st.one_of(
    st.integers(0, 300),
    st.sampled_from([127, 128, 129, 16383, 16384, 16385, 2**21 - 1]),
    st.integers(0, 70000),
)


@settings(max_examples=60, deadline=None)
@given(st.text(), _LENGTHS)
def test_heads_plus_payload_are_the_whole_message(path: str, length: int) -> None:
    data = (bytes(range(256)) * (length // 256 + 1))[:length]
    head = encode_write_raw_chunk_head(path, length)
    assert head + data == bytes(WriteRawChunk(path=path, data=data))
    assert head + data == encode_write_raw_chunk(path, data)
    head = encode_data_chunk_head(length)
    assert head + data == bytes(DataChunk(data=data))
    assert head + data == encode_data_chunk(data)
    head = encode_exec_stdin_head(length)
    assert head + data == bytes(ExecInput(stdin_data=data))
    assert head + data == encode_exec_stdin(data)


@given(st.integers(0, 2**63 - 1))
def test_reference_varint_is_betterprotos(value: int) -> None:
    # WriteRawResponse.bytes_written (int64, field 1) is betterproto2's varint encoder.
    assert bytes(WriteRawResponse(bytes_written=value)) == (
        b"\x08" + _uvarint(value) if value else b""
    )


@given(st.text(), st.integers(1, 2**63 - 1))
def test_heads_of_large_lengths(path: str, length: int) -> None:
    raw = path.encode("utf-8")
    path_field = b"\x0a" + _uvarint(len(raw)) + raw if raw else b""
    assert encode_write_raw_chunk_head(path, length) == path_field + b"\x12" + _uvarint(length)
    assert encode_data_chunk_head(length) == b"\x0a" + _uvarint(length)
    assert encode_exec_stdin_head(length) == b"\x2a" + _uvarint(length)


# ----------------------------------------------------------------------------------------------
# Decoding: canonical messages


@settings(max_examples=300, deadline=None)
@given(st.text(), st.binary(max_size=300), st.booleans())
def test_decode_write_raw_chunk_round_trip(path: str, data: bytes, abort: bool) -> None:
    message = bytes(WriteRawChunk(path=path, data=data, abort=abort))
    assert _fields_of(decode_write_raw_chunk(message)) == (path, data, abort)
    assert _fields_of(decode_write_raw_chunk(bytearray(message))) == (path, data, abort)
    assert _fields_of(decode_write_raw_chunk(memoryview(message))) == (path, data, abort)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_decode_data_chunk_round_trip(data: bytes) -> None:
    decoded = decode_data_chunk(bytes(DataChunk(data=data)))
    assert isinstance(decoded, memoryview)
    assert bytes(decoded) == data


def test_decode_empty_message_gives_defaults() -> None:
    assert _fields_of(decode_write_raw_chunk(b"")) == ("", b"", False)
    empty = decode_data_chunk(b"")
    assert isinstance(empty, memoryview)
    assert bytes(empty) == b""


# ----------------------------------------------------------------------------------------------
# Decoding: everything else a conforming encoder may send


@settings(max_examples=300, deadline=None)
@given(st.lists(_WRITE_RAW_FIELDS, max_size=12))
def test_decode_write_raw_chunk_any_conforming_encoding(fields: list[Field]) -> None:
    message = _message(fields)
    expected = _expected_write_raw(fields)
    assert _fields_of(decode_write_raw_chunk(message)) == expected
    parsed = WriteRawChunk.parse(message)
    assert (parsed.path, parsed.data, parsed.abort) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(_DATA_CHUNK_FIELDS, max_size=12))
def test_decode_data_chunk_any_conforming_encoding(fields: list[Field]) -> None:
    message = _message(fields)
    data = _last(fields, 1)
    assert data is None or isinstance(data, bytes)
    assert bytes(decode_data_chunk(message)) == (data or b"")
    assert DataChunk.parse(message).data == (data or b"")


def test_decode_fields_in_reverse_order() -> None:
    message = _message([(3, VARINT, 1), (2, LEN, b"payload"), (1, LEN, "dir/é".encode())])
    assert _fields_of(decode_write_raw_chunk(message)) == ("dir/é", b"payload", True)


def test_decode_repeated_fields_last_one_wins() -> None:
    message = _message(
        [
            (1, LEN, b"first"),
            (2, LEN, b"one"),
            (3, VARINT, 1),
            (2, LEN, b"two"),
            (1, LEN, b"second"),
            (3, VARINT, 0),  # an explicit default still overrides the earlier value
        ]
    )
    assert _fields_of(decode_write_raw_chunk(message)) == ("second", b"two", False)
    assert bytes(decode_data_chunk(_message([(1, LEN, b"a"), (1, LEN, b"bc")]))) == b"bc"
    # The last one wins even when it is empty.
    assert bytes(decode_data_chunk(_message([(1, LEN, b"a"), (1, LEN, b"")]))) == b""


@pytest.mark.parametrize("value", [1, 2, 0x80, 2**63, 2**64 - 1])
def test_decode_abort_any_nonzero_varint_is_true(value: int) -> None:
    assert decode_write_raw_chunk(_field(3, VARINT, value)).abort is True
    assert decode_write_raw_chunk(_field(3, VARINT, 0)).abort is False


_UNKNOWN_FIELDS: list[Field] = [
    (4, VARINT, 2**64 - 1),
    (4, VARINT, 0),
    (9, I64, bytes(range(8))),
    (15, LEN, b"\x0a\x03abc"),  # looks like a path, but belongs to field 15
    (16, LEN, b""),  # first field number with a two-byte key
    (MAX_FIELD, I32, b"\x12\x05\xff\xff"),  # looks like a data header
]


@pytest.mark.parametrize(("unknown"), _UNKNOWN_FIELDS, ids=lambda f: f"field{f[0]}-wt{f[1]}")
@pytest.mark.parametrize("where", [0, 1, 2, 3])
def test_decode_write_raw_chunk_skips_unknown_field(unknown: Field, where: int) -> None:
    fields: list[Field] = [(1, LEN, b"p"), (2, LEN, b"\x00data"), (3, VARINT, 1)]
    fields.insert(where, unknown)
    assert _fields_of(decode_write_raw_chunk(_message(fields))) == ("p", b"\x00data", True)


@pytest.mark.parametrize(
    ("unknown"),
    [*_UNKNOWN_FIELDS, (2, LEN, b"path"), (3, VARINT, 1)],
    ids=lambda f: f"field{f[0]}-wt{f[1]}",
)
@pytest.mark.parametrize("where", [0, 1])
def test_decode_data_chunk_skips_unknown_field(unknown: Field, where: int) -> None:
    fields: list[Field] = [(1, LEN, b"\x00data")]
    fields.insert(where, unknown)
    assert bytes(decode_data_chunk(_message(fields))) == b"\x00data"


def test_fixed_width_field_with_a_known_number_is_skipped() -> None:
    # Documented in _fields: fixed-width fields are "checked and skipped", whatever their
    # number. So a path sent as I32 or data sent as I64 is ignored, not refused.
    message = _message([(1, LEN, b"p"), (1, I32, b"abcd"), (2, I64, b"12345678")])
    assert _fields_of(decode_write_raw_chunk(message)) == ("p", b"", False)
    assert bytes(decode_data_chunk(_field(1, I64, b"12345678"))) == b""


# ----------------------------------------------------------------------------------------------
# Decoding: malformed input

_MALFORMED: list[tuple[str, bytes]] = [
    ("truncated key", b"\x80"),
    ("truncated varint value", b"\x18"),
    ("truncated varint value, continuation", b"\x18\x80"),
    ("truncated varint after fields", b"\x0a\x01p\x18\xff"),
    ("varint of 11 bytes", b"\x18" + b"\x80" * 10 + b"\x00"),
    ("key varint of 11 bytes", b"\xa0" + b"\x80" * 9 + b"\x80\x00"),
    ("truncated length", b"\x12"),
    ("length one past the end", b"\x12\x05abcd"),
    ("length far past the end", b"\x12" + _uvarint(2**40) + b"abcd"),
    ("length past the end after fields", b"\x0a\x01p\x12\x02a"),
    ("truncated i64", _uvarint(4 << 3 | I64) + b"1234567"),
    ("truncated i32", _uvarint(4 << 3 | I32) + b"123"),
    ("truncated i64 at end", _uvarint(4 << 3 | I64)),
    ("field number 0", b"\x00\x00"),
    ("field number 0, len", b"\x02\x00"),
    ("group start", _uvarint(4 << 3 | 3)),
    ("group end", _uvarint(4 << 3 | 4)),
    ("group start on known field", _uvarint(1 << 3 | 3) + _uvarint(1 << 3 | 4)),
    ("wire type 6", _uvarint(4 << 3 | 6) + b"\x00"),
    ("wire type 7", _uvarint(4 << 3 | 7) + b"\x00"),
]


@pytest.mark.parametrize(("message"), [m for _, m in _MALFORMED], ids=[n for n, _ in _MALFORMED])
def test_malformed_refused(message: bytes) -> None:
    with pytest.raises(WireError):
        decode_write_raw_chunk(message)
    with pytest.raises(WireError):
        decode_data_chunk(message)


@pytest.mark.parametrize(
    ("message"),
    [
        b"\x12\x04abcd",  # length exactly to the end
        b"\x18" + b"\xff" * 9 + b"\x01",  # a 10-byte varint is the longest allowed
        _uvarint(4 << 3 | I64) + b"12345678",  # fixed-width exactly to the end
        _uvarint(4 << 3 | I32) + b"1234",
        _uvarint(MAX_FIELD << 3 | VARINT) + b"\x00",  # five-byte key
    ],
)
def test_boundaries_accepted(message: bytes) -> None:
    decode_write_raw_chunk(message)


def test_ten_byte_varint_value() -> None:
    assert decode_write_raw_chunk(b"\x18" + b"\x80" * 9 + b"\x01").abort is True


@pytest.mark.parametrize(
    ("message"),
    [
        _field(1, VARINT, 1),  # path as varint
        _field(2, VARINT, 0),  # data as varint
        _field(3, LEN, b"\x01"),  # abort as length-delimited
        _field(3, LEN, b""),
        _message([(1, LEN, b"p"), (1, VARINT, 7)]),  # a later wrong one is still refused
    ],
)
def test_wrong_wire_type_refused_write_raw_chunk(message: bytes) -> None:
    with pytest.raises(WireError, match="wrong wire type"):
        decode_write_raw_chunk(message)


def test_wrong_wire_type_refused_data_chunk() -> None:
    with pytest.raises(WireError, match="wrong wire type"):
        decode_data_chunk(_field(1, VARINT, 5))
    with pytest.raises(WireError, match="wrong wire type"):
        decode_data_chunk(_message([(1, LEN, b"data"), (1, VARINT, 5)]))


def test_wire_error_is_a_value_error() -> None:
    assert issubclass(WireError, ValueError)


def test_non_utf8_path_raises_unicode_decode_error() -> None:
    with pytest.raises(UnicodeDecodeError):
        decode_write_raw_chunk(_field(1, LEN, b"\xff\xfe"))
    with pytest.raises(UnicodeDecodeError):
        decode_write_raw_chunk(_field(1, LEN, "é".encode()[:1]))  # cut inside a character


# ----------------------------------------------------------------------------------------------
# Zero copy: decoded data is a view into the received message


def test_write_raw_chunk_data_is_a_view_into_the_message() -> None:
    buf = bytearray(encode_write_raw_chunk("p", b"hello", abort=True))
    decoded = decode_write_raw_chunk(buf)
    assert isinstance(decoded.data, memoryview)
    assert decoded.data.obj is buf
    assert decoded.data.readonly is False
    start = buf.index(b"hello")
    buf[start] = ord("j")
    assert bytes(decoded.data) == b"jello"


def test_data_chunk_data_is_a_view_into_the_message() -> None:
    buf = bytearray(encode_data_chunk(b"\x00" * 200))
    data = decode_data_chunk(buf)
    assert data.obj is buf
    buf[-1] = 0xFF
    assert data[-1] == 0xFF
    assert len(data) == 200

    immutable = bytes(encode_data_chunk(b"abc"))
    assert decode_data_chunk(immutable).obj is immutable


def test_view_into_a_slice_of_a_larger_buffer() -> None:
    # A receive buffer holding the message somewhere in the middle.
    message = encode_write_raw_chunk("x", b"payload")
    buf = bytearray(b"\xee" * 5 + message + b"\xee" * 5)
    decoded = decode_write_raw_chunk(memoryview(buf)[5 : 5 + len(message)])
    assert decoded.data.obj is buf
    assert _fields_of(decoded) == ("x", b"payload", False)
    buf[buf.index(b"payload")] = ord("P")
    assert bytes(decoded.data) == b"Payload"


def test_decode_reads_bytes_of_a_view_of_wider_items() -> None:
    message = encode_data_chunk(b"abcdefgh")  # 10 bytes: five 2-byte items
    items = array("H")
    items.frombytes(message)
    data = decode_data_chunk(memoryview(items))
    assert data.obj is items
    assert data.nbytes == len(data) == 8
    assert bytes(data) == b"abcdefgh"


def test_encode_counts_bytes_of_a_view_of_wider_items() -> None:
    wide = memoryview(array("H", [0x6161, 0x6262]))  # 2 items, 4 bytes
    assert encode_data_chunk(wide) == bytes(DataChunk(data=b"aabb"))
    assert encode_write_raw_chunk("p", wide) == bytes(WriteRawChunk(path="p", data=b"aabb"))
    assert bytes(decode_data_chunk(encode_data_chunk(wide))) == b"aabb"


# ----------------------------------------------------------------------------------------------
# ListDirResponse: decoded by hand, the generated stub is the reference

_TEXT = st.text().map(lambda s: s.encode("utf-8"))
_FILE_ENTRY_FIELDS: st.SearchStrategy[Field] = st.one_of(
    st.tuples(st.just(1), st.just(LEN), _TEXT),
    st.tuples(st.just(2), st.just(VARINT), st.one_of(st.integers(0, 2), U64)),
    st.tuples(st.just(3), st.just(VARINT), U64),
    st.tuples(st.just(4), st.just(LEN), _TEXT),
    st.tuples(st.just(5), st.just(LEN), _TEXT),
    _unknown(st.integers(6, MAX_FIELD)),
)
#: A ListDirResponse's fields: entries (each any conforming encoding of a FileEntry), unknown.
_LIST_DIR_FIELDS: st.SearchStrategy[Field] = st.one_of(
    st.lists(_FILE_ENTRY_FIELDS, max_size=8).map(lambda f: (1, LEN, _message(f))),
    _unknown(st.integers(2, MAX_FIELD)),
)


def _generated(message: bytes) -> list[tuple[str, bool, int, str, str]]:
    return [(e.path, e.is_dir, e.size, e.mode, e.mod_time)
            for e in ListDirResponse.parse(message).entries]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                          st.text(), st.text()), max_size=20))
def test_decode_list_dir_round_trip(entries: list[tuple[str, bool, int, str, str]]) -> None:
    message = bytes(ListDirResponse(entries=[
        FileEntry(path=p, is_dir=d, size=n, mode=m, mod_time=t) for p, d, n, m, t in entries]))
    assert decode_list_dir(message) == entries
    assert ListDirEntries.FromString(message).entries == entries


@settings(max_examples=300, deadline=None)
@given(st.lists(_LIST_DIR_FIELDS, max_size=10))
def test_decode_list_dir_any_conforming_encoding(fields: list[Field]) -> None:
    message = _message(fields)
    assert decode_list_dir(message) == _generated(message)


def test_decode_list_dir_by_hand_examples() -> None:
    entry = _message([(5, LEN, b"2026-11-26T00:00:00Z"), (3, VARINT, 2**64 - 5),
                      (99, I64, b"12345678"), (2, VARINT, 7), (1, LEN, b"a"),
                      (1, LEN, "dir/é".encode()), (4, LEN, b"-rw-r--r--"), (2, VARINT, 0)])
    message = _message([(7, LEN, b"\x0a\x01x"), (1, LEN, entry), (1, LEN, b"")])
    assert decode_list_dir(message) == [("dir/é", False, -5, "-rw-r--r--",
                                         "2026-11-26T00:00:00Z"), ("", False, 0, "", "")]
    assert decode_list_dir(message) == _generated(message)
    assert decode_list_dir(b"") == []
    # A fixed-width field is skipped whatever its number, as in _fields (betterproto2 fails).
    assert decode_list_dir(message + _field(1, I32, b"abcd")) == decode_list_dir(message)


@pytest.mark.parametrize(("message"), [m for _, m in _MALFORMED], ids=[n for n, _ in _MALFORMED])
def test_decode_list_dir_malformed_refused(message: bytes) -> None:
    with pytest.raises(WireError):
        decode_list_dir(message)
    with pytest.raises(WireError):  # the same inside an entry
        decode_list_dir(_field(1, LEN, message))


@pytest.mark.parametrize(
    ("message"),
    [
        _field(1, VARINT, 1),  # entries as varint
        _field(1, LEN, _field(1, VARINT, 1)),  # path as varint
        _field(1, LEN, _field(2, LEN, b"\x01")),  # is_dir as length-delimited
        _field(1, LEN, _field(3, LEN, b"")),  # size as length-delimited
        _field(1, LEN, _field(4, VARINT, 0)),  # mode as varint
        _field(1, LEN, _field(5, VARINT, 0)),  # mod_time as varint
    ],
)
def test_decode_list_dir_wrong_wire_type_refused(message: bytes) -> None:
    with pytest.raises(WireError, match="wrong wire type"):
        decode_list_dir(message)


def test_decode_list_dir_non_utf8_raises_unicode_decode_error() -> None:
    for number in (1, 4, 5):
        with pytest.raises(UnicodeDecodeError):
            decode_list_dir(_field(1, LEN, _field(number, LEN, b"\xff\xfe")))
