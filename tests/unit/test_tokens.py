"""Admin bearer tokens: what the gateway's verifier accepts and refuses, and what the CLI issues."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from backup_common.adapters.settings import Settings, SettingsError
from backup_common.adapters.tokens import InvalidToken, Principal, TokenVerifier, issue_token, principal_from_claims

SECRET = "k" * 40
OTHER_SECRET = "o" * 40


def hs_settings(**overrides: Any) -> Settings:
    return Settings(jwt_secret=SECRET, **overrides)


def sign(claims: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def claims(**extra: Any) -> dict[str, Any]:
    """Claims of a valid admin token that expires in ten minutes, with `extra` merged in."""
    now = int(time.time())
    return {"sub": "alice", "role": "admin", "iat": now, "exp": now + 600, **extra}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes) -> str:
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(payload).encode())
    return f"{head}.{body}.{b64url(signature)}"


def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(token)
    return str(caught.value)


def test_an_issued_admin_token_verifies_and_is_admin() -> None:
    settings = hs_settings()
    token = issue_token(settings, subject="alice", roles=["admin"], ttl_seconds=300)

    principal = TokenVerifier(settings).verify(token)

    assert principal == Principal("alice", frozenset({"admin"}))
    assert principal.is_admin


def test_an_issued_token_carries_exp_iat_and_both_role_claims() -> None:
    before = int(time.time())
    token = issue_token(hs_settings(), subject="alice", roles=["admin"], ttl_seconds=300)

    decoded = jwt.decode(token, SECRET, algorithms=["HS256"])

    assert decoded["sub"] == "alice"
    assert decoded["role"] == "admin"
    assert decoded["roles"] == ["admin"]
    assert before <= decoded["iat"] <= int(time.time())
    assert decoded["exp"] == decoded["iat"] + 300


@pytest.mark.parametrize(
    "role_claims",
    [{"role": "admin"}, {"roles": ["admin"]}, {"roles": ["viewer", "admin"]}, {"role": "viewer", "roles": ["admin"]}],
)
def test_either_the_role_claim_or_the_roles_list_grants_admin(role_claims: dict[str, Any]) -> None:
    now = int(time.time())
    token = sign({"sub": "alice", "exp": now + 600, **role_claims})

    assert TokenVerifier(hs_settings()).verify(token).is_admin


@pytest.mark.parametrize(
    "role_claims",
    [{}, {"role": "viewer"}, {"roles": ["viewer"]}, {"role": "Admin"}, {"role": ["admin"]}, {"roles": "admin"}],
)
def test_a_token_without_the_admin_role_verifies_but_is_not_admin(role_claims: dict[str, Any]) -> None:
    now = int(time.time())
    token = sign({"sub": "bob", "exp": now + 600, **role_claims})

    principal = TokenVerifier(hs_settings()).verify(token)

    assert principal.subject == "bob"
    assert not principal.is_admin


def test_an_issued_non_admin_token_verifies_but_is_not_admin() -> None:
    settings = hs_settings()
    token = issue_token(settings, subject="carol", roles=["viewer", "auditor"], ttl_seconds=300)

    principal = TokenVerifier(settings).verify(token)

    assert principal.roles == frozenset({"viewer", "auditor"})
    assert not principal.is_admin


def test_principal_from_claims_ignores_non_string_roles_and_defaults_the_subject() -> None:
    principal = principal_from_claims({"sub": "", "role": 1, "roles": ["admin", 2, None, {"x": 1}]})

    assert principal == Principal("unknown", frozenset({"admin"}))


def test_an_expired_token_is_refused() -> None:
    now = int(time.time())
    token = sign(claims(iat=now - 3600, exp=now - 120))

    assert refused(TokenVerifier(hs_settings()), token) == "token expired"


def test_a_token_expired_within_the_leeway_is_still_accepted() -> None:
    now = int(time.time())
    token = sign(claims(iat=now - 3600, exp=now - 5))

    assert TokenVerifier(hs_settings()).verify(token).is_admin


def test_a_token_without_exp_is_refused() -> None:
    payload = claims()
    del payload["exp"]

    assert refused(TokenVerifier(hs_settings()), sign(payload)) == "token lacks the 'exp' claim"


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
def test_a_time_claim_given_as_a_string_is_refused_even_when_it_reads_as_a_number(name: str) -> None:
    token = sign(claims(**{name: str(int(time.time()) + 600)}))
    expected = "token is malformed or its signature does not verify"
    if name == "exp":
        expected = "the token's 'exp' claim must be a number (seconds since the epoch)"

    assert refused(TokenVerifier(hs_settings()), token) == expected


def test_a_subject_of_255_characters_is_accepted_and_one_longer_is_refused() -> None:
    verifier = TokenVerifier(hs_settings())

    assert verifier.verify(sign(claims(sub="s" * 255))).subject == "s" * 255
    assert (
        refused(verifier, sign(claims(sub="s" * 300))) == "the token's sub claim is too long (at most 255 characters)"
    )


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = sign(claims(), key=OTHER_SECRET)

    assert "signature does not verify" in refused(TokenVerifier(hs_settings()), token)


def test_a_token_whose_payload_was_altered_is_refused() -> None:
    head, _, signature = sign(claims(role="viewer")).split(".")
    forged = f"{head}.{b64url(json.dumps(claims()).encode())}.{signature}"

    assert "signature does not verify" in refused(TokenVerifier(hs_settings()), forged)


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "Bearer x.y.z"])
def test_garbage_is_refused_as_malformed(token: str) -> None:
    assert "malformed" in refused(TokenVerifier(hs_settings()), token)


def test_an_unsigned_token_with_alg_none_is_refused() -> None:
    token = handmade_token({"alg": "none", "typ": "JWT"}, claims(), b"")

    refused(TokenVerifier(hs_settings()), token)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_a_token_signed_with_another_hmac_algorithm_is_refused_because_the_algorithm_is_pinned() -> None:
    token = sign(claims(), algorithm="HS512")

    refused(TokenVerifier(hs_settings()), token)


def test_rs256_tokens_issued_with_the_private_key_verify(rsa_keys: tuple[str, str]) -> None:
    private, public = rsa_keys
    settings = Settings(jwt_algorithm="RS256", jwt_public_key=public)
    token = issue_token(settings, subject="alice", roles=["admin"], ttl_seconds=300, private_key=private)

    principal = TokenVerifier(settings).verify(token)

    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert principal == Principal("alice", frozenset({"admin"}))


def test_issuing_an_rs256_token_without_the_private_key_is_refused(rsa_keys: tuple[str, str]) -> None:
    settings = Settings(jwt_algorithm="RS256", jwt_public_key=rsa_keys[1])

    with pytest.raises(ValueError, match="private key"):
        issue_token(settings, subject="alice", roles=["admin"], ttl_seconds=300)


def test_an_rs256_token_signed_by_another_key_is_refused(rsa_keys: tuple[str, str]) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    settings = Settings(jwt_algorithm="RS256", jwt_public_key=rsa_keys[1])

    refused(TokenVerifier(settings), sign(claims(), key=other_pem, algorithm="RS256"))


def test_an_hs256_token_keyed_with_the_public_key_is_refused_by_an_rs256_verifier(rsa_keys: tuple[str, str]) -> None:
    """Algorithm confusion: the public key is public, so an HMAC made with it proves nothing."""
    public = rsa_keys[1]
    verifier = TokenVerifier(Settings(jwt_algorithm="RS256", jwt_public_key=public))
    header = {"alg": "HS256", "typ": "JWT"}
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims()).encode())
    mac = hmac.new(public.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{head}.{body}.{b64url(mac)}"

    refused(verifier, forged)


def test_an_hs256_token_is_refused_by_an_rs256_verifier_whatever_its_key(rsa_keys: tuple[str, str]) -> None:
    verifier = TokenVerifier(Settings(jwt_algorithm="RS256", jwt_public_key=rsa_keys[1]))

    refused(verifier, sign(claims(), key=SECRET))


def test_the_issuer_is_enforced_when_configured() -> None:
    settings = hs_settings(jwt_issuer="https://auth.example.com")
    verifier = TokenVerifier(settings)

    assert verifier.verify(sign(claims(iss="https://auth.example.com"))).is_admin
    assert "issuer" in refused(verifier, sign(claims(iss="https://evil.example.com")))
    assert refused(verifier, sign(claims())) == "token lacks the 'iss' claim"


def test_the_audience_is_enforced_when_configured() -> None:
    settings = hs_settings(jwt_audience="backup-api")
    verifier = TokenVerifier(settings)

    assert verifier.verify(sign(claims(aud="backup-api"))).is_admin
    assert verifier.verify(sign(claims(aud=["other-api", "backup-api"]))).is_admin
    assert "audience" in refused(verifier, sign(claims(aud="other-api")))
    assert refused(verifier, sign(claims())) == "token lacks the 'aud' claim"


def test_issued_tokens_carry_the_configured_issuer_and_audience() -> None:
    settings = hs_settings(jwt_issuer="https://auth.example.com", jwt_audience="backup-api")
    token = issue_token(settings, subject="alice", roles=["admin"], ttl_seconds=300)

    decoded = jwt.decode(token, options={"verify_signature": False})

    assert (decoded["iss"], decoded["aud"]) == ("https://auth.example.com", "backup-api")
    assert TokenVerifier(settings).verify(token).is_admin


def test_a_token_meant_for_another_audience_is_refused_when_no_audience_is_configured() -> None:
    """A token another service was meant to receive is never taken as ours (RFC 7519 4.1.3)."""
    verifier = TokenVerifier(hs_settings())

    with pytest.raises(InvalidToken, match="audience"):
        verifier.verify(sign(claims(aud="some-other-service")))


def test_a_token_with_an_issuer_is_accepted_when_no_issuer_is_configured() -> None:
    verifier = TokenVerifier(hs_settings())

    assert verifier.verify(sign(claims(iss="https://anyone.example.com"))).is_admin


def test_a_verifier_cannot_be_built_without_a_secret() -> None:
    with pytest.raises(SettingsError, match="BACKUP_JWT_SECRET"):
        TokenVerifier(Settings())
