"""The managers' key: CA keys are kept sealed in the store."""

from __future__ import annotations

import pytest

from shoal.errors import InvalidArgument
from shoal.manager.ca import RootCA
from shoal.manager.keys import decode_ca, encode_ca, key_from_wire, key_to_wire, new_manager_key, seal, unseal

CLUSTER = "c1uster0000000000000000ab"


@pytest.fixture(scope="module")
def ca() -> RootCA:
    return RootCA.create(CLUSTER)


def test_a_stored_ca_carries_no_private_key_in_clear(ca: RootCA) -> None:
    key = new_manager_key()

    stored = encode_ca(ca, key, "/shoal/ca")

    assert b"PRIVATE KEY" not in stored and ca.key_pem not in stored
    assert decode_ca(stored, key, "/shoal/ca") == ca


def test_only_the_managers_key_opens_it(ca: RootCA) -> None:
    stored = encode_ca(ca, new_manager_key(), "/shoal/ca")
    with pytest.raises(InvalidArgument, match="cannot decrypt"):
        decode_ca(stored, new_manager_key(), "/shoal/ca")


def test_a_sealed_value_is_bound_to_its_purpose() -> None:
    key = new_manager_key()
    sealed = seal(key, b"secret", b"/shoal/store-ca")
    assert unseal(key, sealed, b"/shoal/store-ca") == b"secret"
    with pytest.raises(InvalidArgument):
        unseal(key, sealed, b"/shoal/ca")  # moved to another key in the store, it does not open
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(InvalidArgument):
        unseal(key, tampered, b"/shoal/store-ca")


def test_the_key_travels_as_base64_and_must_be_256_bits() -> None:
    key = new_manager_key()
    assert key_from_wire(key_to_wire(key)) == key
    with pytest.raises(InvalidArgument, match="256-bit"):
        key_from_wire(key_to_wire(key[:16]))
