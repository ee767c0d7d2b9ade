"""Join tokens in Docker's format: ``SWMTKN-1-<CA digest>-<secret>``.

The digest pins the cluster's root CA, so a joining node can fetch the CA certificate over an
unverified connection and still detect a wrong manager address or a man in the middle. The secret tells
the manager whether the node joins as a worker or a manager (each role has its own secret).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import string
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from shoal.errors import InvalidArgument, JoinRefused
from shoal.ids import random_secret

TOKEN_PREFIX = "SWMTKN"
TOKEN_VERSION = 1
DIGEST_LENGTH = 50  # sha256 in base 36 needs at most 50 digits
SECRET_LENGTH = 25

_BASE36_DIGITS = string.digits + string.ascii_lowercase
_BASE36 = frozenset(_BASE36_DIGITS)
_SHOWN_PREFIX = 20  # how much of a malformed token an error repeats: enough to recognise, not the secret


def _to_base36(number: int) -> str:
    digits = []
    while number:
        number, remainder = divmod(number, 36)
        digits.append(_BASE36_DIGITS[remainder])
    return "".join(reversed(digits)) or "0"


def _is_base36(text: str) -> bool:
    return all(char in _BASE36 for char in text)


def ca_digest(ca_cert_pem: bytes) -> str:
    """The sha256 of the DER certificate as a 50-digit lowercase base-36 number, as Docker prints it."""
    try:
        der = x509.load_pem_x509_certificate(ca_cert_pem).public_bytes(Encoding.DER)
    except ValueError as error:
        raise InvalidArgument(f"the CA certificate is not a valid PEM certificate: {error}") from None
    return _to_base36(int.from_bytes(hashlib.sha256(der).digest(), "big")).zfill(DIGEST_LENGTH)


@dataclass(frozen=True)
class JoinToken:
    version: int
    ca_digest: str
    secret: str = field(repr=False)  # keep it out of logs

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}-{self.version}-{self.ca_digest}-{self.secret}"


def make_token(ca_cert_pem: bytes, secret: str | None = None) -> str:
    """A token for the cluster whose root CA is `ca_cert_pem`; a fresh random secret unless one is given."""
    if secret is None:
        secret = random_secret(SECRET_LENGTH)
    elif len(secret) != SECRET_LENGTH or not _is_base36(secret):
        raise InvalidArgument(f"a join token secret is {SECRET_LENGTH} lowercase base-36 characters")
    return str(JoinToken(TOKEN_VERSION, ca_digest(ca_cert_pem), secret))


def _malformed(text: str) -> JoinRefused:
    shown = json.dumps(
        text if len(text) <= _SHOWN_PREFIX else text[:_SHOWN_PREFIX] + "...", ensure_ascii=False
    )
    return JoinRefused(
        f"invalid join token {shown}: a token looks like {TOKEN_PREFIX}-{TOKEN_VERSION}-"
        f"<{DIGEST_LENGTH} characters>-<{SECRET_LENGTH} characters>; "
        'print a valid one with "shoal swarm join-token worker" on a manager'
    )


def parse_token(text: str) -> JoinToken:
    """Split and validate a token; anything malformed raises JoinRefused with one line saying what a token looks like."""
    stripped = text.strip()  # tolerate the newline a copy-paste brings along
    parts = stripped.split("-")
    if len(parts) != 4:
        raise _malformed(stripped)
    prefix, version, digest, secret = parts
    if (
        prefix != TOKEN_PREFIX
        or version != str(TOKEN_VERSION)
        or len(digest) != DIGEST_LENGTH
        or len(secret) != SECRET_LENGTH
        or not _is_base36(digest)
        or not _is_base36(secret)
        or int(digest, 36).bit_length() > 256
    ):
        raise _malformed(stripped)
    return JoinToken(TOKEN_VERSION, digest, secret)


def check_ca(token: JoinToken, ca_cert_pem: bytes) -> None:
    """Refuse a CA certificate (fetched unverified from the manager) that is not the one the token pins."""
    try:
        actual = ca_digest(ca_cert_pem)
    except InvalidArgument as error:
        raise JoinRefused(
            f"the manager sent an invalid CA certificate ({error.message}): check the manager address"
        ) from None
    if actual != token.ca_digest:
        # Whole digests: a token altered near its end has the same prefix as the real one.
        raise JoinRefused(
            f"the manager's CA certificate does not match the join token (its digest is {actual}, the token "
            f"expects {token.ca_digest}): check the token and the manager address"
        )


def secrets_match(a: str, b: str) -> bool:
    """Compare secrets in constant time, so response timing does not leak how much of a guess was right."""
    return hmac.compare_digest(a.encode(), b.encode())
