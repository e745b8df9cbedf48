"""DICOM peer addresses ``AE@HOST:PORT`` (e.g. ``ORTHANC@127.0.0.1:4242``).

An application entity title is 1–16 characters of the DICOM default repertoire without
backslash or control characters, not only spaces (PS3.5 §6.2, VR AE); leading and
trailing spaces are not significant and are removed.  HOST is a name, an IPv4 address or
an IPv6 address in brackets (``[::1]``); PORT an integer in 1–65535.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

AE_MAX_CHARS = 16
FORMAT_HINT = "expected AE@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242"


@dataclass(frozen=True)
class Peer:
    """A DICOM application entity reachable at ``host:port``."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


def check_ae_title(title: str, what: str = "AE title") -> str:
    """The AE title without padding spaces; InputError naming the problem if invalid."""
    if not isinstance(title, str):
        raise InputError(f"{what} must be text, got {type(title).__name__}")
    stripped = title.strip(" ")
    if not stripped:
        raise InputError(f"{what} {title!r} is empty")
    if len(stripped) > AE_MAX_CHARS:
        raise InputError(f"{what} {stripped!r} is longer than {AE_MAX_CHARS} characters")
    bad = [c for c in stripped if c == "\\" or not (" " <= c <= "~")]
    if bad:
        raise InputError(f"{what} {stripped!r} holds a character not allowed in an AE title "
                         f"({bad[0]!r}: backslash, control and non-ASCII characters are not)")
    return stripped


def parse_peer(text: str) -> Peer:
    """``AE@HOST:PORT`` → :class:`Peer`; InputError with one line naming what is wrong."""
    if not isinstance(text, str) or "@" not in text:
        raise InputError(f"peer address {text!r}: no '@' ({FORMAT_HINT})")
    ae, _, rest = text.rpartition("@")
    title = check_ae_title(ae, f"peer address {text!r}: AE title")
    if rest.startswith("["):
        host, sep, port_text = rest[1:].partition("]")
        if not sep or not port_text.startswith(":"):
            raise InputError(f"peer address {text!r}: an IPv6 host needs the form "
                             "[ADDRESS]:PORT")
        port_text = port_text[1:]
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise InputError(f"peer address {text!r}: no ':PORT' ({FORMAT_HINT})")
        if ":" in host:
            raise InputError(f"peer address {text!r}: write an IPv6 host in brackets, "
                             "e.g. ORTHANC@[::1]:4242")
    if not host or any(c.isspace() for c in host):
        raise InputError(f"peer address {text!r}: empty or invalid host ({FORMAT_HINT})")
    return Peer(title, host, parse_port(port_text, f"peer address {text!r}: port"))


def parse_port(text: str | int, what: str = "port") -> int:
    """A TCP port number 1–65535 (from text or an int); InputError otherwise."""
    try:
        port = int(str(text).strip(), 10)
    except ValueError:
        raise InputError(f"{what} {text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise InputError(f"{what} {port} is outside 1–65535")
    return port
