"""Join tokens: Docker's SWMTKN-1 format, the CA digest they pin, and refusals of malformed ones."""

from __future__ import annotations

import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from shoal.errors import InvalidArgument, JoinRefused
from shoal.manager.ca import RootCA
from shoal.tokens import JoinToken, ca_digest, check_ca, make_token, parse_token, secrets_match

SECRET = "0123456789abcdefghijklmno"


@pytest.fixture(scope="module")
def ca() -> RootCA:
    return RootCA.create("cluster-a")


@pytest.fixture(scope="module")
def other_ca() -> RootCA:
    return RootCA.create("cluster-b")


def test_ca_digest_is_sha256_of_der_in_padded_base36(ca: RootCA) -> None:
    der = x509.load_pem_x509_certificate(ca.cert_pem).public_bytes(Encoding.DER)
    digest = ca_digest(ca.cert_pem)
    assert len(digest) == 50
    assert digest == digest.lower() and digest.isalnum()
    assert int(digest, 36) == int.from_bytes(hashlib.sha256(der).digest(), "big")


def test_ca_digest_ignores_pem_framing(ca: RootCA) -> None:
    # The digest is of the DER certificate, so re-wrapped PEM (as pasted or re-serialised) pins the same CA.
    assert ca_digest(b"\n" + ca.cert_pem + b"\n\n") == ca_digest(ca.cert_pem)


def test_ca_digest_differs_between_cas(ca: RootCA, other_ca: RootCA) -> None:
    assert ca_digest(ca.cert_pem) != ca_digest(other_ca.cert_pem)


def test_ca_digest_refuses_garbage() -> None:
    with pytest.raises(InvalidArgument):
        ca_digest(b"not a certificate")


def test_token_round_trip(ca: RootCA) -> None:
    text = make_token(ca.cert_pem, SECRET)
    assert text == f"SWMTKN-1-{ca_digest(ca.cert_pem)}-{SECRET}"
    assert parse_token(text) == JoinToken(version=1, ca_digest=ca_digest(ca.cert_pem), secret=SECRET)
    assert str(parse_token(text)) == text


def test_make_token_draws_a_fresh_secret_each_time(ca: RootCA) -> None:
    first, second = parse_token(make_token(ca.cert_pem)), parse_token(make_token(ca.cert_pem))
    assert len(first.secret) == 25
    assert first.secret != second.secret
    assert first.ca_digest == second.ca_digest


@pytest.mark.parametrize("secret", ["short", "0123456789ABCDEFGHIJKLMNO", "0123456789abcdefghijklmn-"])
def test_make_token_refuses_a_malformed_secret(ca: RootCA, secret: str) -> None:
    with pytest.raises(InvalidArgument):
        make_token(ca.cert_pem, secret)


def test_parse_tolerates_surrounding_whitespace(ca: RootCA) -> None:
    text = make_token(ca.cert_pem, SECRET)
    assert parse_token(f"  {text}\n").secret == SECRET


DIGEST = "1" * 50
MALFORMED = {
    "empty": "",
    "garbage": "abc",
    "spaces only": "   ",
    "wrong prefix": f"SWMTKX-1-{DIGEST}-{SECRET}",
    "lowercase prefix": f"swmtkn-1-{DIGEST}-{SECRET}",
    "unknown version": f"SWMTKN-2-{DIGEST}-{SECRET}",
    "digest too short": f"SWMTKN-1-{DIGEST[:-1]}-{SECRET}",
    "digest too long": f"SWMTKN-1-{DIGEST}1-{SECRET}",
    "secret too short": f"SWMTKN-1-{DIGEST}-{SECRET[:-1]}",
    "secret too long": f"SWMTKN-1-{DIGEST}-{SECRET}p",
    "missing secret": f"SWMTKN-1-{DIGEST}",
    "extra part": f"SWMTKN-1-{DIGEST}-{SECRET}-{SECRET}",
    "uppercase digest": f"SWMTKN-1-{'A' * 50}-{SECRET}",
    "non base-36 secret": f"SWMTKN-1-{DIGEST}-{'_' * 25}",
    "digest beyond 256 bits": f"SWMTKN-1-{'z' * 50}-{SECRET}",
    "non-ascii": f"SWMTKN-1-{'é' * 50}-{SECRET}",
    "FIPS token": f"FIPS-SWMTKN-1-{DIGEST}-{SECRET}",
}


@pytest.mark.parametrize("text", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_tokens_are_refused_with_one_clear_line(text: str) -> None:
    with pytest.raises(JoinRefused) as caught:
        parse_token(text)
    message = caught.value.message
    assert message.startswith("invalid join token ")
    assert "SWMTKN-1-<50 characters>-<25 characters>" in message
    assert "\n" not in message
    assert caught.value.status == 400


def test_malformed_token_message_matches_the_documented_form() -> None:
    with pytest.raises(JoinRefused) as caught:
        parse_token("abc")
    assert caught.value.message == (
        'invalid join token "abc": a token looks like SWMTKN-1-<50 characters>-<25 characters>; '
        'print a valid one with "shoal swarm join-token worker" on a manager'
    )


def test_refusal_does_not_echo_the_secret() -> None:
    with pytest.raises(JoinRefused) as caught:
        parse_token(f"SWMTKN-1-{DIGEST}-{SECRET}x")
    assert SECRET not in caught.value.message


def test_token_repr_hides_the_secret() -> None:
    assert SECRET not in repr(JoinToken(1, DIGEST, SECRET))


def test_check_ca_accepts_the_pinned_ca(ca: RootCA) -> None:
    check_ca(parse_token(make_token(ca.cert_pem)), ca.cert_pem)


def test_check_ca_refuses_another_ca(ca: RootCA, other_ca: RootCA) -> None:
    token = parse_token(make_token(ca.cert_pem))
    with pytest.raises(JoinRefused) as caught:
        check_ca(token, other_ca.cert_pem)
    assert caught.value.message.startswith(
        "the manager's CA certificate does not match the join token (its digest is "
    )
    assert caught.value.message.endswith("): check the token and the manager address")


def test_a_digest_altered_at_its_end_is_told_apart(ca: RootCA) -> None:
    real = ca_digest(ca.cert_pem)
    altered = real[:-1] + ("0" if real[-1] != "0" else "1")
    with pytest.raises(JoinRefused) as caught:
        check_ca(JoinToken(1, altered, SECRET), ca.cert_pem)
    # Both digests are shown whole, so the difference is there to see.
    assert f"its digest is {real}, the token expects {altered}" in caught.value.message


def test_secrets_match() -> None:
    assert secrets_match(SECRET, SECRET)
    assert not secrets_match(SECRET, SECRET[:-1] + "p")
    assert not secrets_match(SECRET, "")


def test_check_ca_refuses_a_garbled_ca_certificate(ca: RootCA) -> None:
    with pytest.raises(JoinRefused, match="invalid CA certificate"):
        check_ca(parse_token(make_token(ca.cert_pem)), b"<html>not a certificate</html>")
