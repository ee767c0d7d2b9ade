"""The managers' key: what keeps the CA keys in the store unreadable to anyone who is not a manager.

The cluster CA and the store CA live in the store with their private keys sealed (AES-256-GCM) under one key
that every manager holds in a file of its own and that nothing else has: a copy of etcd's data, a backup or a
dump carries no usable CA key. A manager gets the key when it joins as a manager or is promoted, over its
mutually authenticated connection to another manager.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shoal import codec
from shoal.errors import InvalidArgument
from shoal.manager.ca import RootCA

KEY_BYTES = 32
NONCE_BYTES = 12
DATA_KEY_PURPOSE = b"/shoal/data-key"


def new_manager_key() -> bytes:
    return AESGCM.generate_key(bit_length=8 * KEY_BYTES)


def seal(key: bytes, plaintext: bytes, purpose: bytes) -> bytes:
    """`plaintext` encrypted and authenticated under `key`; `purpose` binds it to its use (not secret)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, purpose)


def unseal(key: bytes, sealed: bytes, purpose: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], purpose)
    except (InvalidTag, ValueError):
        raise InvalidArgument(
            "cannot decrypt a sealed key: this manager's key is not the swarm's (was its state dir replaced?)"
        ) from None


def encode_ca(ca: RootCA, manager_key: bytes, purpose: str) -> bytes:
    """The stored form of a CA: its certificate in clear, its key sealed under the managers' key."""
    sealed = seal(manager_key, ca.key_pem, purpose.encode())
    return codec.dumps({"cert": ca.cert_pem.decode(), "sealed_key": base64.b64encode(sealed).decode()})


def decode_ca(raw: bytes, manager_key: bytes, purpose: str) -> RootCA:
    record = codec.loads(raw)
    sealed = base64.b64decode(record["sealed_key"])
    return RootCA.load(str(record["cert"]).encode(), unseal(manager_key, sealed, purpose.encode()))


def new_data_key() -> bytes:
    """The cluster's data key, which seals secrets in the store; kept there wrapped with the managers' key."""
    return AESGCM.generate_key(bit_length=8 * KEY_BYTES)


def wrap_data_key(data_key: bytes, manager_key: bytes) -> bytes:
    return seal(manager_key, data_key, DATA_KEY_PURPOSE)


def unwrap_data_key(wrapped: bytes, manager_key: bytes) -> bytes:
    return unseal(manager_key, wrapped, DATA_KEY_PURPOSE)


def seal_secret(data_key: bytes, secret_id: str, data: bytes) -> str:
    """A secret's data as stored: sealed, bound to the secret's ID, in base64."""
    return base64.b64encode(seal(data_key, data, b"secret:" + secret_id.encode())).decode()


def open_secret(data_key: bytes, secret_id: str, stored: str) -> bytes:
    return unseal(data_key, base64.b64decode(stored), b"secret:" + secret_id.encode())


def key_to_wire(key: bytes) -> str:
    return base64.b64encode(key).decode()


def key_from_wire(text: str) -> bytes:
    key = base64.b64decode(text)
    if len(key) != KEY_BYTES:
        raise InvalidArgument("the managers' key received is not a 256-bit key")
    return key
