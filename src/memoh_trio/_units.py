"""Parsing of user-supplied sizes and targets (pure; shared by the CLI and the library)."""

from __future__ import annotations

import ipaddress
import re

from ._errors import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?)(i?b?)\s*$", re.IGNORECASE)
_SCALE = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """Parse ``"65536"``, ``"64k"``, ``"64KiB"``, ``"1M"``, ``"1MiB"`` into bytes (binary units).

    Raises:
        ConfigError: the text is not a positive size.
    """
    match = _SIZE_RE.match(text)
    if match is None:
        raise ConfigError(f"not a size: {text!r} (examples: 65536, 256KiB, 1MiB)")
    value = int(match.group(1)) * _SCALE[match.group(2).lower()]
    if value <= 0:
        raise ConfigError(f"size must be positive: {text!r}")
    return value


def format_size(n: float) -> str:
    """Human-readable binary size: ``1536`` → ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_target(text: str) -> tuple[str, int]:
    """Split ``"host:port"`` (or ``"[::1]:port"``) into host and port.

    Raises:
        ConfigError: malformed target, or a port outside 1..65535.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"malformed target {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(
                f"malformed target {text!r}: {host!r} is not an IPv6 address"
            ) from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(f"malformed target {text!r}: expected HOST:PORT")
    if not host:
        raise ConfigError(f"malformed target {text!r}: the host is empty")
    if not port_text.isdigit():
        raise ConfigError(f"malformed target {text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"malformed target {text!r}: port {port} is outside 1..65535")
    return host, port


#: The placeholder of a target template (``migrate-all --target-template``).
BOT_ID_FIELD = "{bot_id}"
#: A template that works, for error messages and the README.
TEMPLATE_EXAMPLE = "{bot_id}.bots.internal:9090"


def check_target_template(template: str) -> str:
    """Check a ``HOST:PORT`` template whose host holds ``{bot_id}``; return it unchanged.

    ``{bot_id}`` is replaced by each bot's id, so the template must be a valid target for any bot
    id: the placeholder belongs in the host (``{bot_id}.bots.internal:9090``, ``10.0.0.7:9090``
    has no room for it), never in the port.

    Raises:
        ConfigError: no ``{bot_id}``, or not ``HOST:PORT`` once it is filled in; the message
            quotes ``template`` as the user typed it.
    """
    hint = f"expected HOST:PORT with {BOT_ID_FIELD} in the host, e.g. '{TEMPLATE_EXAMPLE}'"
    if BOT_ID_FIELD not in template:
        raise ConfigError(f"target template {template!r} has no {BOT_ID_FIELD}: {hint}")
    _host, sep, port = template.strip().rpartition(":")
    if sep and BOT_ID_FIELD in port:
        raise ConfigError(f"target template {template!r} puts {BOT_ID_FIELD} in the port: {hint}")
    try:
        parse_target(template.replace(BOT_ID_FIELD, "bot"))
    except ConfigError:
        raise ConfigError(f"malformed target template {template!r}: {hint}") from None
    return template


def fill_target_template(template: str, bot_id: str) -> str:
    """The target of one bot (pure)."""
    return template.replace(BOT_ID_FIELD, bot_id)


def parse_listen(text: str) -> tuple[str, int]:
    """Like :func:`parse_target` but port 0 (pick a free port) is allowed; an error quotes
    ``text`` as typed and calls it a listen address.

    Raises:
        ConfigError: malformed address, or a port outside 0..65535.
    """
    stripped = text.strip()
    try:
        if stripped.endswith(":0"):
            host, _ = parse_target(stripped[:-1] + "1")  # port 1 stands in for 0 to check it
            return host, 0
        return parse_target(stripped)
    except ConfigError as exc:
        why = str(exc).partition(": ")[2]
        raise ConfigError(f"malformed listen address {text!r}: "
                          f"{why.replace('1..65535', '0..65535')}") from None
