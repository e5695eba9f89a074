"""Secrets' key and sealing: a value is sealed with fleetd's key before the registry
sees it, and opened only for the engine's desired sets (daemon/service/secrets.py).

The key is 32 random bytes (AES-256-GCM, ``cryptography``'s AESGCM), base64 in a file
of its own (``secrets_key`` in fleetd.toml, default ``<state_dir>/secrets.key``), made
with mode 0600 the first time a secret is set, and refused when others than its owner
may read it. Each value is sealed with a fresh 96-bit nonce and its secret's name as
associated data, so a sealed value copied under another name does not open. The
registry holds ``v1:`` + base64(nonce + ciphertext + tag) and a random version; the
SQLite file and etcd never hold a value in clear. Several fleetd on one etcd need the
same key file: copy it to each (mode 0600) before the first ``secret set``; a fleetd
with another key cannot open the values, and the units that need them wait with a
reason saying so.

Nothing here logs a value, and no error quotes one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import stat
from typing import Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("fleetd.secrets")
KEY_BYTES = 32
NONCE_BYTES = 12
FORMAT = "v1:"


class SecretKeyError(Exception):
    """The key file cannot be used; the message names it and why."""


def load_key(path: str, create: bool) -> Optional[bytes]:
    """The key in ``path``; with ``create``, made first if there is none (``_make_key``).
    None when there is none and ``create`` is false. SecretKeyError for a file others
    may read, or one that holds no key."""
    if create:
        _make_key(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SecretKeyError(f"secrets key {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SecretKeyError(f"secrets key {path}: not a regular file")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretKeyError(f"secrets key {path}: mode {stat.S_IMODE(mode):04o}, but it "
                                 f"must be readable by its owner only (chmod 600 {path})")
        raw = os.read(fd, 1024)
    finally:
        os.close(fd)
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise SecretKeyError(f"secrets key {path}: not a key fleetd made (want "
                             f"{KEY_BYTES} bytes, base64)")
    return key


def _make_key(path: str) -> None:
    """A new key at ``path`` unless one is there: written whole to a file of its own
    (0600 from its creation), then linked to ``path``, so that nobody ever reads half a
    key, and of two fleetd making one at once, one key wins and both use it."""
    tmp = f"{path}.new.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, base64.b64encode(os.urandom(KEY_BYTES)) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    except FileExistsError:
        return
    except OSError as exc:
        raise SecretKeyError(f"secrets key {path}: cannot make it: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    log.info("made the secrets key %s (mode 0600); with several fleetd on one etcd, copy "
             "it to each", path)


def seal(key: bytes, name: str, value: str) -> str:
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, value.encode("utf-8", "surrogatepass"),
                                 name.encode())
    return FORMAT + base64.b64encode(nonce + sealed).decode()


def open_sealed(key: bytes, name: str, sealed: str) -> str:
    """The value; LookupError when it does not open with ``key`` (another key, or a
    record not sealed under this name)."""
    if not sealed.startswith(FORMAT):
        raise LookupError("stored in a form this fleetd does not know")
    try:
        raw = base64.b64decode(sealed[len(FORMAT):], validate=True)
        plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], name.encode())
    except (binascii.Error, ValueError, InvalidTag):
        raise LookupError("does not open with this fleetd's secrets key (with several "
                          "fleetd, each needs the same key file)") from None
    return plain.decode("utf-8", "surrogatepass")
