"""GitLab as an OAuth 2 / OpenID Connect provider (docs.gitlab.com/api/oauth2).

Authorization code flow with PKCE, refresh tokens, ``/oauth/userinfo``,
``/oauth/token/info``, ``/oauth/revoke`` and a discovery document. Error
answers follow Doorkeeper, which GitLab is built on: ``invalid_client`` is a
401, a bad, reused or mismatched code is ``400 invalid_grant``.

An application registered with ``pkce_required`` must send an S256
``code_challenge`` (RFC 7636 4.4.1: ``invalid_request`` otherwise) and the
matching ``code_verifier``; any application that sent a challenge must send
its verifier (RFC 7636 4.6).

Known differences from GitLab, on purpose:

- apps count as trusted, so there is no consent screen; "signed in at GitLab"
  is one global setting (:meth:`GitLabDouble.login_as`) instead of a cookie, and
  when nobody is signed in a small login form lists the users as buttons;
- the ``id_token`` is signed with RS256 like GitLab's, by a key made once per
  test process and published at ``jwks_uri``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
from datetime import timedelta
from html import escape
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, request
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.gitlab_double.api import bearer_token, store
from tests.gitlab_double.state import AccessToken, OAuthApp, OAuthGrant, Store, User

oauth = Blueprint("oauth", __name__)

TOKEN_LIFETIME = 7200
CODE_LIFETIME = 600
SCOPES = [
    "api",
    "read_api",
    "read_user",
    "read_repository",
    "write_repository",
    "openid",
    "profile",
    "email",
]


def oauth_error(status: int, code: str, description: str) -> Response:
    response = jsonify({"error": code, "error_description": description})
    response.status_code = status
    return response


def invalid_client() -> Response:
    return oauth_error(
        401,
        "invalid_client",
        "Client authentication failed due to unknown client, no client "
        "authentication included, or unsupported authentication method.",
    )


def invalid_grant() -> Response:
    return oauth_error(
        400,
        "invalid_grant",
        "The provided authorization grant is invalid, expired, revoked, does "
        "not match the redirection URI used in the authorization request, or "
        "was issued to another client.",
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


#: RFC 7636 4.1 / 4.2: a verifier is 43-128 unreserved characters; an S256
#: challenge is the unpadded base64url SHA-256 of it, 43 characters.
PKCE_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
PKCE_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")


def pkce_matches(verifier: str | None, challenge: str, method: str) -> bool:
    if not verifier or not PKCE_VERIFIER.fullmatch(verifier) or not challenge:
        return False
    if method == "S256":
        expected = b64url(hashlib.sha256(verifier.encode()).digest())
    else:
        expected = verifier
    return hmac.compare_digest(expected, challenge)


def id_token(data: Store, app: OAuthApp, user: User, nonce: str | None) -> str:
    """An OIDC ID token, RS256-signed (see module doc)."""
    now = int(data.now().timestamp())
    claims: dict[str, Any] = {
        "iss": data.url,
        "sub": str(user.id),
        "aud": app.client_id,
        "exp": now + 120,
        "iat": now,
        "auth_time": now,
        "sub_legacy": hashlib.sha256(str(user.id).encode()).hexdigest(),
        "name": user.name,
        "nickname": user.username,
        "preferred_username": user.username,
        "email": user.email,
        "email_verified": True,
        "website": "",
        "profile": f"{data.url}/{user.username}",
        "picture": f"{data.url}/uploads/-/system/user/avatar/{user.id}/a.png",
        "groups_direct": [],
    }
    if nonce:
        claims["nonce"] = nonce
    key = signing_key()
    header = {"alg": "RS256", "typ": "JWT", "kid": key.kid}
    return str(jwt.encode(header, claims, key))


@functools.cache
def signing_key() -> RSAKey:
    """The RSA key id tokens are signed with (GitLab publishes its own at
    ``/oauth/discovery/keys``)."""
    return RSAKey.generate_key(
        2048, parameters={"kid": "gitlab-double", "use": "sig", "alg": "RS256"}
    )


def user_claims(data: Store, user: User, scopes: list[str]) -> dict[str, Any]:
    """``/oauth/userinfo`` claims; ``email`` needs the ``email`` scope or a
    public address (docs: OpenID Connect provider, shared information)."""
    email = user.email if "email" in scopes else user.public_email
    return {
        "sub": str(user.id),
        "sub_legacy": hashlib.sha256(str(user.id).encode()).hexdigest(),
        "name": user.name,
        "nickname": user.username,
        "preferred_username": user.username,
        "email": email,
        "email_verified": email is not None,
        "website": "",
        "profile": f"{data.url}/{user.username}",
        "picture": f"{data.url}/uploads/-/system/user/avatar/{user.id}/a.png",
        "groups": [],
        "groups_direct": [],
    }


def token_answer(token: AccessToken) -> dict[str, Any]:
    return {
        "access_token": token.token,
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME,
        "refresh_token": token.refresh_token,
        "scope": " ".join(token.scopes),
        "created_at": int(token.created_at.timestamp()),
    }


def authorize_redirect(uri: str, **params: str | None) -> Response:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    separator = "&" if "?" in uri else "?"
    return Response(status=302, headers={"Location": f"{uri}{separator}{query}"})


@oauth.route("/oauth/authorize", methods=["GET", "POST"])
def authorize() -> Response | tuple[str, int]:
    """Sign the browser in, check the request, then send it back with a code.

    As on GitLab, signing in comes first: its ``resource_owner_authenticator``
    sends an anonymous browser to the sign-in page before Doorkeeper looks at
    the client or the redirect URI. Errors about those are then shown on a
    page, never redirected (RFC 6749 4.1.2.1); the rest go back to the client.
    """
    data = store()
    args = request.args
    with data.lock:
        if request.method == "POST":
            chosen = next(
                (
                    u
                    for u in data.users.values()
                    if u.username == request.form.get("username")
                ),
                None,
            )
            data.signed_in_user_id = chosen.id if chosen else None
        user = data.users.get(data.signed_in_user_id or 0)
        if user is None:
            return login_page(data), 200

        app = data.apps.get(args.get("client_id", ""))
        if app is None:
            return "invalid_client: client not found", 401
        redirect_uri = args.get("redirect_uri", "")
        if redirect_uri not in app.redirect_uris:
            return "invalid_redirect_uri: the redirect URI is not registered", 400
        state = args.get("state")
        if args.get("response_type") != "code":
            return authorize_redirect(
                redirect_uri, error="unsupported_response_type", state=state
            )
        scopes = (args.get("scope") or " ".join(app.scopes)).split()
        if not set(scopes) <= set(app.scopes):
            return authorize_redirect(redirect_uri, error="invalid_scope", state=state)
        challenge = args.get("code_challenge")
        method = args.get("code_challenge_method") or ("plain" if challenge else None)
        if method not in {None, "plain", "S256"}:
            return authorize_redirect(
                redirect_uri, error="invalid_request", state=state
            )
        if app.pkce_required and not (
            method == "S256" and challenge and PKCE_CHALLENGE.fullmatch(challenge)
        ):
            # RFC 7636 4.4.1: a server that requires PKCE answers
            # invalid_request; an S256 challenge is 43 base64url characters.
            return authorize_redirect(
                redirect_uri,
                error="invalid_request",
                error_description="Code challenge is required.",
                state=state,
            )

        grant = OAuthGrant(
            code=secrets.token_hex(32),
            client_id=app.client_id,
            user_id=user.id,
            redirect_uri=redirect_uri,
            scopes=scopes,
            challenge=challenge,
            challenge_method=method,
            nonce=args.get("nonce"),
            expires_at=data.now() + timedelta(seconds=CODE_LIFETIME),
        )
        data.grants[grant.code] = grant

    return authorize_redirect(redirect_uri, code=grant.code, state=state)


def login_page(data: Store) -> str:
    """The stand-in for GitLab's sign-in page: one button per active user."""
    buttons = "\n".join(
        f'<button type="submit" name="username" value="{escape(u.username)}" '
        f'data-username="{escape(u.username)}">{escape(u.name)}</button>'
        for u in data.users.values()
        if u.state == "active" and not u.bot
    )
    action = escape(request.full_path, quote=True)
    return (
        "<!doctype html><html><head><title>Sign in · GitLab</title></head><body>"
        f'<h1>Sign in</h1><form method="post" action="{action}">{buttons}</form>'
        "</body></html>"
    )


def client_credentials() -> tuple[str | None, str | None]:
    """Client id and secret from HTTP Basic or from the form body."""
    auth = request.authorization
    if auth and auth.type == "basic":
        return auth.username, auth.password
    form = request.form if request.form else (request.get_json(silent=True) or {})
    return form.get("client_id"), form.get("client_secret")


@oauth.route("/oauth/token", methods=["POST"])
def token() -> Response:
    data = store()
    form = request.form if request.form else (request.get_json(silent=True) or {})
    client_id, secret = client_credentials()
    with data.lock:
        app = data.apps.get(client_id or "")
        if app is None:
            return invalid_client()
        if app.confidential and not hmac.compare_digest(secret or "", app.secret):
            return invalid_client()

        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return exchange_code(data, app, form)
        if grant_type == "refresh_token":
            return refresh(data, app, form)
    return oauth_error(
        400,
        "unsupported_grant_type",
        "The authorization grant type is not supported by the authorization server.",
    )


def exchange_code(data: Store, app: OAuthApp, form: Any) -> Response:
    grant = data.grants.get(form.get("code") or "")
    if grant is None or grant.used or grant.client_id != app.client_id:
        return invalid_grant()
    # A code is single-use even when the exchange below fails.
    grant.used = True
    if grant.expires_at <= data.now():
        return invalid_grant()
    if form.get("redirect_uri") != grant.redirect_uri:
        return invalid_grant()
    if (grant.challenge or app.pkce_required) and not pkce_matches(
        form.get("code_verifier"),
        grant.challenge or "",
        grant.challenge_method or "plain",
    ):
        return invalid_grant()

    issued = data.issue_token(
        grant.user_id, grant.scopes, client_id=app.client_id, lifetime=TOKEN_LIFETIME
    )
    body = token_answer(issued)
    if "openid" in grant.scopes:
        body["id_token"] = id_token(data, app, data.users[grant.user_id], grant.nonce)
    return jsonify(body)


def refresh(data: Store, app: OAuthApp, form: Any) -> Response:
    """Rotate: the old access and refresh token stop working."""
    old = next(
        (
            t
            for t in data.tokens.values()
            if t.refresh_token
            and t.refresh_token == form.get("refresh_token")
            and t.client_id == app.client_id
            and not t.revoked
        ),
        None,
    )
    if old is None:
        return invalid_grant()
    old.revoked = True

    issued = data.issue_token(
        old.user_id, old.scopes, client_id=app.client_id, lifetime=TOKEN_LIFETIME
    )
    body = token_answer(issued)
    if "openid" in old.scopes:
        body["id_token"] = id_token(data, app, data.users[old.user_id], None)
    return jsonify(body)


def valid_token(data: Store) -> AccessToken | None:
    found = data.tokens.get(bearer_token() or "")
    if found is None or found.revoked:
        return None
    if found.expires_at and found.expires_at <= data.now():
        return None
    return found


@oauth.route("/oauth/userinfo", methods=["GET", "POST"])
def userinfo() -> Response:
    data = store()
    with data.lock:
        found = valid_token(data)
        if found is None:
            return oauth_error(401, "invalid_token", "The access token is invalid")
        if "openid" not in found.scopes:
            return oauth_error(
                403, "insufficient_scope", "The request requires the openid scope"
            )
        return jsonify(user_claims(data, data.users[found.user_id], found.scopes))


@oauth.route("/oauth/token/info")
def token_info() -> Response:
    data = store()
    with data.lock:
        found = valid_token(data)
        if found is None:
            return oauth_error(401, "invalid_token", "The access token is invalid")
        remaining = (
            int((found.expires_at - data.now()).total_seconds())
            if found.expires_at
            else None
        )
        return jsonify(
            {
                "resource_owner_id": found.user_id,
                "scope": found.scopes,
                "expires_in": remaining,
                "expires_in_seconds": remaining,
                "application": {"uid": found.client_id},
                "created_at": int(found.created_at.timestamp()),
            }
        )


@oauth.route("/oauth/revoke", methods=["POST"])
def revoke() -> Response:
    """RFC 7009: answer 200 whether or not the token was known."""
    data = store()
    client_id, secret = client_credentials()
    value = request.form.get("token", "")
    with data.lock:
        app = data.apps.get(client_id or "")
        if app is None or (app.confidential and secret != app.secret):
            return invalid_client()
        for found in data.tokens.values():
            if found.client_id == app.client_id and value in {
                found.token,
                found.refresh_token,
            }:
                found.revoked = True
    return jsonify({})


@oauth.route("/.well-known/openid-configuration")
def discovery() -> Response:
    base = store().url
    return jsonify(
        {
            "issuer": base,
            "authorization_endpoint": f"{base}/oauth/authorize",
            "token_endpoint": f"{base}/oauth/token",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "introspection_endpoint": f"{base}/oauth/introspect",
            "userinfo_endpoint": f"{base}/oauth/userinfo",
            "jwks_uri": f"{base}/oauth/discovery/keys",
            "scopes_supported": SCOPES,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query", "fragment", "form_post"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
            ],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": sorted(user_claims_names()),
            "code_challenge_methods_supported": ["plain", "S256"],
        }
    )


def user_claims_names() -> set[str]:
    return {
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "nonce",
        "name",
        "nickname",
        "preferred_username",
        "email",
        "email_verified",
        "profile",
        "picture",
        "groups",
    }


@oauth.route("/oauth/discovery/keys")
def keys() -> Response:
    return jsonify({"keys": [signing_key().as_dict(private=False)]})
