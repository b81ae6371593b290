"""Airflow's own login in front of the ops pages.

Airflow mounts plugin apps without authentication, so every route depends on ``require_user``:
the token (``Authorization: Bearer`` first, else the UI's ``_token`` session cookie) is validated
by Airflow's auth manager — signature, expiry, audience, revocation — exactly as the API server's
own ``get_user`` does, and the user must be allowed to see this plugin's custom view.
Missing or expired token: 401; forged or otherwise invalid: 403; not allowed: 403.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import HTTPException, Request, status

log = logging.getLogger(__name__)

#: the custom view name auth managers are asked about (``is_authorized_custom_view``)
RESOURCE = "BrainTumorOps"
COOKIE = "_token"  # airflow.api_fastapi.auth.managers.base_auth_manager.COOKIE_NAME_JWT_TOKEN


def token_of(request: Request) -> str | None:
    """The bearer token of the request, else its session cookie (None when neither)."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(COOKIE) or None


async def require_user(request: Request) -> Any:
    """The Airflow user behind the request's token; HTTPException 401/403 otherwise."""
    from airflow.api_fastapi.app import get_auth_manager
    from jwt import ExpiredSignatureError, InvalidTokenError

    token = token_of(request)
    if not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Not authenticated: log in to Airflow")
    manager = get_auth_manager()
    try:
        user = await manager.get_user_from_token(token)
    except ExpiredSignatureError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Token expired: log in again") from exc
    except InvalidTokenError as exc:
        log.warning("ops pages: invalid token refused (%s)", type(exc).__name__)
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Invalid token") from exc
    if not manager.is_authorized_custom_view(method="GET", resource_name=RESOURCE, user=user):
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"user {user.get_name()!r} may not view {RESOURCE}")
    return user
