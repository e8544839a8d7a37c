"""The bearer token that the repository calls (index, load, unload) need, over HTTP and gRPC alike."""

from __future__ import annotations

import hmac

from service.errors import Forbidden, Unauthorized

DISABLED = ("the model repository extension is disabled: the operator has not set "
            "NNSERVE_REPOSITORY_TOKEN")


def authorize(authorization: str, token: str, refused: str) -> None:
    """Accept `authorization` ("Bearer <token>", any scheme case) when it carries the operator's `token`, compared
    in constant time; raise Forbidden when no token is configured, Unauthorized with `refused` otherwise."""
    if not token:
        raise Forbidden(DISABLED)
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized(refused)
