"""Reading the API key off a request. Key stores live in ``gateway.keys``."""

from __future__ import annotations


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key from ``Authorization: Bearer`` (or ``api-key`` / ``x-api-key``), if any."""
    for name, value in headers:
        if name == b"authorization":
            v = value.decode("latin-1")
            if v[:7].lower() == "bearer ":
                return v[7:].strip() or None
            return None
        if name == b"api-key" or name == b"x-api-key":
            return value.decode("latin-1").strip() or None
    return None
