"""Secrets at rest: Fernet encryption under `BOOKBAG_SECRET_KEY`, with key rotation.

`BOOKBAG_SECRET_KEY` holds one Fernet key, or several separated by commas,
the newest first: the first encrypts, any of them decrypts (MultiFernet).
Rotating is: prepend a new key, run `bookbag-gateway byo rotate` (re-encrypts
every stored secret under the first key, `rotate_column` for each table that
keeps one: BYO keys, webhook secrets), then drop the old key.
This is the only module that imports `cryptography`, and only when a secret
is first encrypted or decrypted (it costs ~7 MB; the keys are checked at
startup without it); its exceptions become `KeyringError` here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlmodel import Session, SQLModel, select

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet


class KeyringError(ValueError):
    """The secret key is missing or malformed, or a ciphertext does not decrypt under it."""


def generate_key() -> str:
    """A fresh key for `BOOKBAG_SECRET_KEY`."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")


def _is_fernet_key(key: str) -> bool:
    """What `Fernet(key)` accepts: 32 bytes, url-safe base64."""
    try:
        return len(base64.urlsafe_b64decode(key.encode("ascii"))) == 32
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False


def fingerprint(secret: str) -> str:
    """What may be shown of a secret: a short hash that identifies it, never its text."""
    return "sha256:" + hashlib.sha256(secret.encode("utf-8")).hexdigest()[:16]


class Keyring:
    def __init__(self, secret_key: str | None) -> None:
        keys = [k.strip() for k in (secret_key or "").split(",") if k.strip()]
        for i, key in enumerate(keys, 1):
            if not _is_fernet_key(key):
                raise KeyringError(
                    f"BOOKBAG_SECRET_KEY: key {i} of {len(keys)} is not a Fernet key (32 url-safe "
                    "base64-encoded bytes); create one with `bookbag-gateway byo generate-key`"
                )
        self._keys = keys
        self._fernet: MultiFernet | None = None

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    def _require(self) -> MultiFernet:
        if not self._keys:
            raise KeyringError(
                "BOOKBAG_SECRET_KEY is not set: it is needed to store provider keys and webhook "
                "secrets encrypted (create one with `bookbag-gateway byo generate-key`)"
            )
        if self._fernet is None:
            from cryptography.fernet import Fernet, MultiFernet

            self._fernet = MultiFernet([Fernet(k.encode("ascii")) for k in self._keys])
        return self._fernet

    def encrypt(self, plaintext: str) -> str:
        return self._require().encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        from cryptography.fernet import InvalidToken

        try:
            return self._require().decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise KeyringError(
                "a stored secret does not decrypt with BOOKBAG_SECRET_KEY (was the key changed "
                "without keeping the old one in the list?)"
            ) from None

    def rotate(self, ciphertext: str) -> str:
        """The same secret encrypted under the first key."""
        from cryptography.fernet import InvalidToken

        try:
            return self._require().rotate(ciphertext.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError):
            raise KeyringError(
                "a stored secret does not decrypt with any key in BOOKBAG_SECRET_KEY"
            ) from None


def rotate_column(engine: Engine, keyring: Keyring, table: type[SQLModel], column: str) -> int:
    """Re-encrypt `column` of every row of `table` under the first key, in one transaction
    (a secret that decrypts under no key stops it, changing nothing); how many rows."""
    with Session(engine) as session:
        rows = list(session.exec(select(table)))
        for row in rows:
            setattr(row, column, keyring.rotate(getattr(row, column)))
            session.add(row)
        session.commit()
    return len(rows)
