"""API keys -> callers. Deny by default; keys compared by digest in constant time."""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol

from gateway.config import AuthSettings
from gateway.types import Caller


def digest(key: str) -> str:
    # API keys are long random strings: a fast hash is the right tool (no password stretching)
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore(Protocol):
    async def lookup(self, api_key: str) -> Caller | None: ...


class ConfigKeyStore:
    """Keys listed in the config file (``auth.keys``)."""

    def __init__(self, auth: AuthSettings) -> None:
        self._by_digest: dict[str, Caller] = {}
        for k in auth.keys:
            d = k.key_sha256.lower() if k.key_sha256 else digest(k.key.get_secret_value())  # type: ignore[union-attr]
            self._by_digest[d] = Caller(tenant=k.tenant, key_id=k.id, models=tuple(k.models), policy=k.policy, scopes=tuple(k.scopes))

    def __len__(self) -> int:
        return len(self._by_digest)

    async def lookup(self, api_key: str) -> Caller | None:
        d = digest(api_key)
        caller = self._by_digest.get(d)
        # the dict lookup is by digest, so timing says nothing about the key; compare anyway
        if caller is not None and hmac.compare_digest(d, digest(api_key)):
            return caller
        return None


class ChainKeyStore:
    """Try several stores in order (config keys first, then a managed store)."""

    def __init__(self, *stores: KeyStore) -> None:
        self.stores = stores

    async def lookup(self, api_key: str) -> Caller | None:
        for s in self.stores:
            caller = await s.lookup(api_key)
            if caller is not None:
                return caller
        return None


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            v = value.decode("latin-1")
            if v[:7].lower() == "bearer ":
                return v[7:].strip() or None
            return None
        if name == b"api-key" or name == b"x-api-key":
            return value.decode("latin-1").strip() or None
    return None
