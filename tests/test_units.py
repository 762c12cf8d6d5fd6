import pytest
from hypothesis import given
from hypothesis import strategies as st

from memoh_trio._errors import ConfigError
from memoh_trio._units import format_size, parse_listen, parse_size, parse_target


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", 1), ("65536", 65536), ("64k", 65536), ("64KiB", 65536), ("1M", 1 << 20),
     ("1MiB", 1 << 20), ("2mb", 2 << 20), ("1G", 1 << 30), (" 3 MiB ", 3 << 20)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "0", "-1", "1.5M", "abc", "1T", "1 MiBs", "0k"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)


@given(st.integers(min_value=1, max_value=1 << 40))
def test_parse_size_roundtrips_plain_integers(n: int) -> None:
    assert parse_size(str(n)) == n


def test_format_size() -> None:
    assert format_size(10) == "10 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(3 << 30) == "3.0 GiB"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9090", ("127.0.0.1", 9090)), ("localhost:1", ("localhost", 1)),
     ("[::1]:65535", ("::1", 65535)), ("bot-1.internal:9090", ("bot-1.internal", 9090))],
)
def test_parse_target(text: str, expected: tuple[str, int]) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    "text", ["", "9090", ":9090", "host", "host:", "host:0", "host:65536", "host:abc",
             "::1:9090", "[::1]9090", "[::1]", "[zz]:1", "host:-1"],
)
def test_parse_target_rejects_with_a_message(text: str) -> None:
    with pytest.raises(ConfigError, match="target"):
        parse_target(text)


def test_parse_listen_allows_port_zero() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("0.0.0.0:9090") == ("0.0.0.0", 9090)
    with pytest.raises(ConfigError):
        parse_listen("nohost")
