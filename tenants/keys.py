"""Tenant API keys: generation, checksum and keyed hashing (docs/design.md#security). Pure functions.

A generated key is ``tpk_`` + 32 base62 characters of randomness (190 bits) + a 6-character
base62 CRC32 of those, so a mistyped or truncated key is refused without a database look-up
and secret scanners can recognise ours. Keys given in a configuration file (e.g. ``ta_xxx``)
carry no checksum; they are stored the same way and only skip the checksum test.

What a key's display keeps (`key_display_parts`, stored on the key for staff and the tenant to
recognise it) is never enough to help guess it: a generated key shows ``tpk_`` and 4 characters,
then its last 4 (30 random characters stay hidden). Any other key shows its last 4 characters
only when at least `DISPLAY_HIDDEN_MIN` others stay hidden, and otherwise nothing at all; its
leading characters are never shown, since nothing tells a namespace such as ``ta_`` from secret
characters (``ta_xxx`` used to be stored as ``ta`` + ``_xxx``: the whole key).
"""

import hashlib
import hmac
import secrets
import string
import zlib

KEY_PREFIX = "tpk_"
_ALPHABET = string.digits + string.ascii_letters
_RANDOM_CHARS = 32
_CHECKSUM_CHARS = 6
GENERATED_KEY_LENGTH = len(KEY_PREFIX) + _RANDOM_CHARS + _CHECKSUM_CHARS
MAX_KEY_LENGTH = 256
DISPLAY_SHOWN = 4  # characters of a key's end that its display may show
DISPLAY_HIDDEN_MIN = 16  # ... when at least this many others stay hidden (imported keys)


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        chars.append(_ALPHABET[rest])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_CHARS)


def key_generate() -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_CHARS))
    return f"{KEY_PREFIX}{body}{_checksum(body)}"


def key_is_well_formed(key: str) -> bool:
    """False for keys that cannot be ours: wrong length, characters, or checksum."""
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable() or " " in key:
        return False
    if not key.startswith(KEY_PREFIX):
        return True  # an imported key: nothing to check locally
    if len(key) != GENERATED_KEY_LENGTH:
        return False
    body = key[len(KEY_PREFIX) : len(KEY_PREFIX) + _RANDOM_CHARS]
    return hmac.compare_digest(_checksum(body), key[-_CHECKSUM_CHARS:])


def key_hash(key: str, *, pepper: str) -> str:
    return hmac.new(pepper.encode(), key.encode(), hashlib.sha256).hexdigest()


def key_display_parts(key: str) -> tuple[str, str]:
    """(prefix, last4) shown in place of the key once it has been handed out; either may be ""
    (see the module's docstring: an imported key shorter than 20 characters shows nothing)."""
    if key.startswith(KEY_PREFIX) and key_is_well_formed(key):
        return key[: len(KEY_PREFIX) + 4], key[-DISPLAY_SHOWN:]
    if len(key) - DISPLAY_SHOWN >= DISPLAY_HIDDEN_MIN:
        return "", key[-DISPLAY_SHOWN:]
    return "", ""
