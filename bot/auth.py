"""Sign-in with GitLab: OAuth 2 authorization code with PKCE, through Authlib.

Each attempt gets a fresh ``state`` and PKCE verifier, which Authlib keeps in
the (signed, HttpOnly) session cookie and checks on the callback, so a forged
or replayed callback is refused. On success the session is cleared and
refilled, so an identifier planted before sign-in never carries over (session
fixation). Only the person's identity is kept; their access token is not stored,
because the bot checks access with its own token on every join.

Scopes are ``openid read_user``: enough to know who someone is and their commit
email; nothing that lets the bot act as them.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.flask_client import OAuth
from flask import (
    Blueprint,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue

from bot.provision import Person

log = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)

SCOPES = "openid read_user"


def init_app(app: Any) -> None:
    settings = app.config["RWBOT_SETTINGS"]
    # One registry per app: Authlib caches clients, and a process may hold
    # several apps (tests, or several installations behind one server).
    oauth = OAuth(app)
    app.extensions["rwbot_oauth"] = oauth
    if settings.oauth_client_id and settings.oauth_client_secret:
        oauth.register(
            "gitlab",
            client_id=settings.oauth_client_id,
            client_secret=settings.oauth_client_secret,
            server_metadata_url=f"{settings.gitlab_url}/.well-known/openid-configuration",
            api_base_url=f"{settings.gitlab_url}/api/v4/",
            client_kwargs={"scope": SCOPES, "code_challenge_method": "S256"},
        )
    app.register_blueprint(bp)


def current_person() -> Person | None:
    data = session.get("person")
    if not isinstance(data, dict):
        return None
    try:
        return Person(
            int(data["id"]),
            str(data["username"]),
            str(data["name"]),
            str(data["email"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _client() -> Any:
    return current_app.extensions["rwbot_oauth"].create_client("gitlab")


@bp.get("/auth/login")
def login() -> ResponseReturnValue:
    client = _client()
    if client is None:
        return render_template(
            "refused.html.j2",
            title="Sign-in is not configured",
            reason="The bot's administrator has not set up the GitLab OAuth "
            "application yet (RWBOT_OAUTH_CLIENT_ID and RWBOT_OAUTH_CLIENT_SECRET).",
        ), 503
    session["next"] = _safe_next(request.args.get("next", "/"))
    redirect_uri = current_app.config["RWBOT_SETTINGS"].public_url + url_for(
        "auth.callback"
    )
    response: ResponseReturnValue = client.authorize_redirect(redirect_uri)
    return response


@bp.get("/auth/callback")
def callback() -> ResponseReturnValue:
    client = _client()
    if client is None:
        return redirect("/auth/login")
    try:
        token = client.authorize_access_token()
        user = client.get("user", token=token).json()
    except (OAuthError, ValueError, KeyError) as err:
        log.warning("sign-in failed", extra={"error": type(err).__name__})
        return render_template(
            "refused.html.j2",
            title="Sign-in failed",
            reason="GitLab did not confirm the sign-in (it may have expired or been "
            "used already). Please follow the join link again.",
        ), 400
    next_url = _safe_next(session.get("next", "/"))
    session.clear()
    session["person"] = {
        "id": int(user["id"]),
        "username": str(user["username"]),
        "name": str(user.get("name") or user["username"]),
        "email": str(user.get("commit_email") or user.get("public_email") or ""),
    }
    log.info("signed in", extra={"user": user["username"]})
    return redirect(next_url)


@bp.post("/auth/logout")
def logout() -> ResponseReturnValue:
    session.clear()
    return redirect("/")


def _safe_next(target: object) -> str:
    """Only ever redirect within the bot (no open redirect)."""
    if not isinstance(target, str):
        return "/"
    parts = urlsplit(target)
    if (
        parts.scheme
        or parts.netloc
        or not target.startswith("/")
        or target.startswith("//")
    ):
        return "/"
    return target
