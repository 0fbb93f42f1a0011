"""Bearer-token authentication with roles (`infer`, `upload`, `ops`).

401 when the Authorization header is missing, malformed or names an unknown token; 403 when the token lacks
the role. Tokens are compared in constant time. The audit log names a caller by the token's `name` if the
settings give one, else by "token:<first 8 hex of its sha256>" (the token itself is never logged).
Dev mode (POSELOOP_DEV=1, no tokens configured) generates one random token per role for this process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from continual.settings import ROLES, Settings, TokenSpec


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: `actor` for the audit log, and its roles."""

    actor: str
    roles: frozenset[str]


class TokenAuth:
    def __init__(self, tokens: dict[str, TokenSpec]) -> None:
        self._tokens = [(t.encode(), spec) for t, spec in tokens.items()]

    @classmethod
    def from_settings(cls, settings: Settings) -> tuple[TokenAuth, dict[str, str]]:
        """(auth, generated) where `generated` maps role → token in dev mode without configured tokens."""
        if settings.api.tokens:
            return cls(dict(settings.api.tokens)), {}
        if not settings.api.dev:
            raise ValueError(
                'no API tokens configured: set POSELOOP_TOKENS=\'{"<token>": ["infer"], ...}\' '
                "or POSELOOP_DEV=1 for generated development tokens"
            )
        generated = {role: f"dev-{role}-{secrets.token_urlsafe(18)}" for role in ROLES}
        return cls({tok: TokenSpec(roles=(role,), name=f"dev-{role}") for role, tok in generated.items()}), generated

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthError(401, "unauthenticated", "missing 'Authorization: Bearer <token>' header")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "unauthenticated", "the Authorization header must be 'Bearer <token>'")
        given = token.strip().encode()
        match = None
        for known, spec in self._tokens:  # no early exit: the time does not depend on which token matched
            if hmac.compare_digest(known, given):
                match = spec
        if match is None:
            raise AuthError(401, "unauthenticated", "unknown token")
        actor = match.name or "token:" + hashlib.sha256(given).hexdigest()[:8]
        return Principal(actor, frozenset(match.roles))

    def require(self, authorization: str | None, role: str | None) -> Principal:
        """Authenticate; `role` None = any valid token."""
        principal = self.authenticate(authorization)
        if role is not None and role not in principal.roles:
            raise AuthError(403, "forbidden", f"this token lacks the {role!r} role (has {sorted(principal.roles)})")
        return principal
