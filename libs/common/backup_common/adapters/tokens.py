"""Admin bearer tokens (JWT): checking them in the gateway, issuing them from the CLI."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from backup_common.adapters.settings import Settings

ADMIN_ROLE = "admin"
# The audit log's actor column (and a backup's requested_by) hold at most this many characters.
MAX_SUBJECT_LENGTH = 255


@dataclass(frozen=True)
class Principal:
    subject: str
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles


class InvalidToken(Exception):
    """The token is missing, malformed, expired or not signed by our key; the text says which."""


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        self._key = settings.jwt_verification_key()
        # Pinned: a token's own `alg` header never chooses how it is checked.
        self._algorithms = [settings.jwt_algorithm.value]
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience

    def verify(self, token: str) -> Principal:
        required = ["exp"] + (["iss"] if self._issuer else []) + (["aud"] if self._audience else [])
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                issuer=self._issuer,
                audience=self._audience,
                # A token naming an audience is refused unless it is ours (none configured: refused).
                options={"require": required},
                leeway=30,
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"token lacks the {exc.claim!r} claim") from None
        except (jwt.InvalidIssuerError, jwt.InvalidAudienceError) as exc:
            raise InvalidToken(str(exc).lower()) from None
        except jwt.PyJWTError:
            raise InvalidToken("token is malformed or its signature does not verify") from None
        # A NumericDate (RFC 7519): PyJWT refuses a string nbf or iat, but reads a string exp as a time.
        expires = claims["exp"]
        if isinstance(expires, bool) or not isinstance(expires, int | float):
            raise InvalidToken("the token's 'exp' claim must be a number (seconds since the epoch)")
        subject = claims.get("sub")
        if isinstance(subject, str) and len(subject) > MAX_SUBJECT_LENGTH:
            raise InvalidToken(f"the token's sub claim is too long (at most {MAX_SUBJECT_LENGTH} characters)")
        return principal_from_claims(claims)


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    roles: set[str] = set()
    role = claims.get("role")
    if isinstance(role, str):
        roles.add(role)
    listed = claims.get("roles")
    if isinstance(listed, list):
        roles.update(item for item in listed if isinstance(item, str))
    subject = claims.get("sub")
    return Principal(subject if isinstance(subject, str) and subject else "unknown", frozenset(roles))


def issue_token(settings: Settings, *, subject: str, roles: list[str], ttl_seconds: int, private_key: str = "") -> str:
    """Signs a token the gateway accepts: with the shared secret, or with `private_key` for RS*."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "roles": roles, "iat": now, "exp": now + ttl_seconds}
    if len(roles) == 1:
        claims["role"] = roles[0]
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_algorithm.is_symmetric:
        key = settings.jwt_verification_key()
    elif private_key:
        key = private_key
    else:
        raise ValueError(f"signing {settings.jwt_algorithm} tokens needs the private key (--private-key-file)")
    return jwt.encode(claims, key, algorithm=settings.jwt_algorithm.value)
