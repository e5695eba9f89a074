"""API tokens, one per person or tool, each with a role (http/roles.py): made by
``fleetctl token create``, which shows the token once; fleetd keeps only its SHA-256.

A token is 32 random bytes (``secrets.token_urlsafe``), so a hash without salt or
stretching is enough: nobody can guess the preimage of a 256-bit random value, and a
fast hash costs every request nothing. A lookup compares the hash with every stored one
in constant time (``hmac.compare_digest``), so neither timing nor order tells anything.

Kept in one JSON file in fleetd's state directory (mode 0600), rewritten whole and
renamed over the old one (a crash leaves the old file or the new, never half of one).
``last_used`` is kept in memory at once and written with the next change, or at most
once a LAST_USED_FLUSH_S, so that reads do not each write the disk. With several fleetd
on etcd the tokens are in etcd instead, shared by all (tokens_etcd.py); this class's
``_add`` and ``_remove`` are where the two differ.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from typing import Any, Callable, Dict, List, Optional

from fleetd.daemon.http.roles import ROLES
from fleetd.daemon.service.errors import Conflict, Invalid, NotFound

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,62}")
PREFIX = "fltk_"  # a token says what it is, in a file or a log someone finds
LAST_USED_FLUSH_S = 60.0
CONFIG_NAME = "config"  # the token of fleetd.toml's api.token, an admin's
TOKENS_FILE = "api-tokens.json"  # in the state directory


class StoreError(Exception):
    """The token file cannot be read or written; the message names it (the routes
    answer it 503: nothing was changed)."""


@dataclasses.dataclass
class Token:
    name: str
    role: str
    sha256: str  # hex
    created: float
    last_used: Optional[float] = None

    def shown(self) -> Dict[str, Any]:
        """What ``token list`` shows: everything but the hash."""
        return {"name": self.name, "role": self.role, "created": self.created,
                "last_used": self.last_used}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenStore:
    def __init__(self, path: Optional[str], clock: Callable[[], float] = time.time) -> None:
        """Read ``path`` if it exists (StoreError naming it if it cannot be read); None:
        no file (a subclass keeps them elsewhere)."""
        self.path = path
        self.clock = clock
        self.tokens: Dict[str, Token] = {}
        self._flushed = clock()
        self._dirty = False
        if path is None:
            return
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            self.tokens = {t["name"]: Token(**t) for t in data["tokens"]}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{path}: not a token file fleetd wrote ({exc})") from None

    async def create(self, name: Optional[str], role: Optional[str]) -> str:
        """A new token for ``name`` with ``role``; returns the token itself, which is
        nowhere else from now on."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise Invalid("name", "want 1 to 63 letters, digits, '.', '_', '@' or '-', "
                                  f"starting with a letter or digit; not {name!r}")
        if name == CONFIG_NAME:
            raise Invalid("name", f"{CONFIG_NAME!r} is fleetd.toml's api.token")
        if role not in ROLES:
            raise Invalid("role", f"want one of {', '.join(ROLES)}; not {role!r}")
        if name in self.tokens:
            raise Conflict(f"token {name!r} exists (revoke it first to make a new one)")
        token = PREFIX + secrets.token_urlsafe(32)
        await self._add(Token(name, role, digest(token), self.clock()))
        return token

    async def revoke(self, name: str) -> Token:
        """Forget ``name``'s token: the next request with it is refused."""
        gone = self.tokens.get(name)
        if gone is None:
            raise NotFound(f"no token named {name!r}")
        await self._remove(gone)
        return gone

    async def _add(self, t: Token) -> None:
        """Store ``t`` (StoreError: not stored, nothing changed)."""
        self.tokens[t.name] = t
        try:
            self._save()
        except StoreError:
            del self.tokens[t.name]
            raise

    async def _remove(self, t: Token) -> None:
        """Forget ``t`` (StoreError: still there, nothing changed)."""
        del self.tokens[t.name]
        try:
            self._save()
        except StoreError:
            self.tokens[t.name] = t
            raise

    def list(self) -> List[Dict[str, Any]]:
        return [t.shown() for t in sorted(self.tokens.values(), key=lambda t: t.name)]

    def lookup(self, given: str) -> Optional[Token]:
        """The token whose hash ``given`` has, or None; compared with every one, each in
        constant time. Marks it used."""
        wanted = digest(given)
        found = None
        for t in self.tokens.values():
            if hmac.compare_digest(t.sha256, wanted):
                found = t
        if found is not None:
            found.last_used = self.clock()
            self._dirty = True
            if found.last_used - self._flushed >= LAST_USED_FLUSH_S:
                self.flush()
        return found

    def flush(self) -> None:
        """Write last_used times not written yet; a failure is left for the next time
        (a last_used lost is no token lost)."""
        if self._dirty:
            with contextlib.suppress(StoreError):
                self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        data = {"tokens": [dataclasses.asdict(t) for t in self.tokens.values()]}
        tmp = f"{self.path}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot write the tokens: {exc.strerror}") from None
        self._dirty, self._flushed = False, self.clock()
