"""Encryption at rest for provider credentials (docs/design.md#security): Fernet, with key rotation.

`FIELD_ENCRYPTION_KEYS` lists Fernet keys newest first; the first encrypts, all decrypt. With
none set, one key is derived from SECRET_KEY, so the demo works and production is told to set it.
"""

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, MultiFernet
from django.conf import settings


@cache
def _fernet(keys: tuple[str, ...], secret_key: str) -> MultiFernet:
    if not keys:
        derived = hashlib.sha256(b"provider-credentials:" + secret_key.encode()).digest()
        keys = (base64.urlsafe_b64encode(derived).decode(),)
    return MultiFernet([Fernet(key.encode()) for key in keys])


def _current() -> MultiFernet:
    return _fernet(tuple(settings.FIELD_ENCRYPTION_KEYS), settings.SECRET_KEY)


def encrypt(secret: str) -> str:
    return _current().encrypt(secret.encode()).decode()


def decrypt(token: str) -> str:
    return _current().decrypt(token.encode()).decode()


def reencrypt(token: str) -> str:
    """The same secret under the newest key (for rotation)."""
    return _current().rotate(token.encode()).decode()
