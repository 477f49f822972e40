"""API keys: made, checked and revoked here; only a salted hash of each is stored.

A key reads `sq_<id>_<secret>`: `id` (16 hex digits) is a public lookup id, the primary key of its
`api_keys` row, so a request costs one indexed read and one hash, never a scan over every key;
`secret` is 32 random bytes (256 bits) from `secrets`.

Hashing: PBKDF2-HMAC-SHA256 from the standard library (hashlib.pbkdf2_hmac), a 16-byte random salt
per key, 10,000 iterations, compared with hmac.compare_digest (constant time). Slow KDFs exist to
make guessing a *password* from a leaked hash expensive; a 256-bit random secret cannot be guessed
whatever the hash costs, so the iteration count is kept low on purpose: every API request checks
its key, and 10,000 iterations cost about 3 ms of CPU, where scrypt's usual parameters cost 50 ms.
A leaked `api_keys` table still yields no usable key.

Verified keys are remembered (`Verified`): a request whose key was checked less than
SPEECHQ_API_KEY_CACHE_SECONDS ago skips the database and the hash. The cache holds a SHA-256 digest of
each key, never the key; a revocation (made by the CLI, in another process) takes effect within that TTL.

Keyless mode (contract of issue 14): while no key has ever been created (a revoked key still counts)
and the API listens on loopback, requests need no key and act as an admin. Any other listen address
requires keys (api/preflight.py refuses to start without one).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from shared.schema import ApiKey, utcnow

PREFIX = "sq"
ITERATIONS = 10_000
_FORMAT = re.compile(rf"^{PREFIX}_([0-9a-f]{{16}})_([A-Za-z0-9_-]{{43}})$")


def _hash(secret: str, salt: bytes) -> str:
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, ITERATIONS).hex()


def create(db: Session, name: str, admin: bool = False) -> tuple[ApiKey, str]:
    """A new key row (flushed, not committed) and the key itself, which is never stored nor shown again."""
    key_id, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), secrets.token_bytes(16)
    row = ApiKey(id=key_id, name=name, admin=admin, salt=salt.hex(), hash=_hash(secret, salt))
    db.add(row)
    db.flush()
    return row, f"{PREFIX}_{key_id}_{secret}"


def key_id(token: str) -> str | None:
    """The public id inside a well-formed key, else None."""
    m = _FORMAT.match(token)
    return m.group(1) if m else None


def verify(db: Session, token: str) -> ApiKey | None:
    """The live (not revoked) key row that `token` is, or None."""
    m = _FORMAT.match(token)
    if m is None:
        return None
    row = db.get(ApiKey, m.group(1))
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(_hash(m.group(2), bytes.fromhex(row.salt)), row.hash):
        return None
    return row


def revoke(db: Session, key: str, when: datetime | None = None) -> ApiKey | None:
    """Revoke by id (or by the whole key); the row stays so that its jobs still name it."""
    row = db.get(ApiKey, key_id(key) or key)
    if row is not None and row.revoked_at is None:
        row.revoked_at = when or utcnow()
    return row


def listed(db: Session) -> list[ApiKey]:
    return list(db.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def any_created(db: Session) -> bool:
    """True once any key was created, revoked or not: keyless mode never comes back by revoking keys."""
    return bool(db.scalar(select(exists().where(ApiKey.id.is_not(None)))))


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything: treat it as public


@dataclass(frozen=True)
class Checked:
    """What a verified key says about its caller (no secret in it)."""
    id: str
    name: str
    admin: bool


class Verified:
    """Keys verified lately, by the SHA-256 of the whole key: each entry expires `ttl` seconds after its check,
    so that a revoked key is refused at most `ttl` seconds later. A bad key is never remembered (each try
    costs its hash). At most `size` entries; the oldest go first. Thread-safe (sync routes run on threads)."""

    def __init__(self, ttl: float, size: int = 10_000):
        self.ttl, self.size = ttl, size
        self._entries: dict[bytes, tuple[float, Checked]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> Checked | None:
        if self.ttl <= 0:
            return None
        digest = self._digest(token)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._entries[digest]
                return None
            return entry[1]

    def put(self, token: str, row: ApiKey) -> Checked:
        checked = Checked(row.id, row.name, row.admin)
        if self.ttl > 0:
            with self._lock:
                while len(self._entries) >= self.size:
                    del self._entries[next(iter(self._entries))]
                self._entries[self._digest(token)] = (time.monotonic() + self.ttl, checked)
        return checked
