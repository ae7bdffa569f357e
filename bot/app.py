"""The Flask application factory.

``create_app()`` with no arguments reads the environment, which is what
``gunicorn "bot.app:create_app()"`` does; tests and ``rwbot serve`` pass a
:class:`~bot.settings.Settings` and, if they like, their own store, GitLab
client and runtime, and ``rwbot serve`` the event that wakes its reconciler
after a delivery.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from flask import Flask
from prometheus_client import CollectorRegistry

from bot import auth, endpoint_proxy, health, logs, terminal, webhooks
from bot import runtime as runtimes
from bot import settings as settings_mod
from bot.errors import BotError, TemporaryError
from bot.gitlab import Client
from bot.runtime.base import Runtime
from bot.settings import Settings
from bot.store import Store

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    gitlab: Client | None = None,
    runtime: Runtime | None = None,
    wake: threading.Event | None = None,
) -> Flask:
    from_environment = settings is None
    if settings is None:
        # The gunicorn entry point: everything comes from the environment.
        settings, gitlab, runtime = _from_environment()
    store = store or Store(settings.database_url)
    gitlab = gitlab or Client(settings)

    app = Flask(__name__, template_folder=str(TEMPLATES))
    app.config.update(
        RWBOT_SETTINGS=settings,
        RWBOT_STORE=store,
        RWBOT_GITLAB=gitlab,
        RWBOT_RUNTIME=runtime,
        RWBOT_METRICS=_metrics_registry(store),
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        SECRET_KEY=settings.session_secret,
        SESSION_COOKIE_SECURE=settings.public_url.startswith("https://"),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )
    endpoint_proxy.init_app(app)  # first: endpoint hosts see no other route
    app.register_blueprint(health.bp)
    auth.init_app(app)
    terminal.init_app(app)
    receiver = webhooks.Receiver(app.wsgi_app, settings, store, wake)
    if from_environment and settings.bot_user_id is None:
        # GitLab was down at start: the receiver asks again, in the background.
        receiver.learn_bot_user = _whoami(gitlab)
    app.wsgi_app = receiver  # type: ignore[method-assign]
    return app


def _whoami(gitlab: Client) -> Callable[[], int]:
    return lambda: gitlab.whoami().id


def _from_environment() -> tuple[Settings, Client, Runtime]:
    """Settings, GitLab client and runtime for ``gunicorn "bot.app:create_app()"``.

    A configuration error, or no container runtime to serve terminals with, is
    one line on stderr and gunicorn's exit code for a worker that cannot boot,
    on which the master stops rather than forking workers that fail the same
    way. GitLab being down is no reason not to start: ``/readyz`` reports it,
    and the receiver learns the bot's user later.
    """
    try:
        settings = settings_mod.from_env()
        logs.configure(settings.log_format, settings.log_level, secrets_of(settings))
        gitlab = Client(settings)
        try:
            settings = settings.with_overrides(bot_user_id=gitlab.whoami().id)
        except TemporaryError:
            log.warning("gitlab unreachable at start, bot user not known yet")
        runtime = runtimes.from_settings(settings)
    except BotError as err:  # configuration, or no runtime to serve terminals
        from gunicorn.arbiter import Arbiter

        print(f"rwbot: {err}", file=sys.stderr, flush=True)
        raise SystemExit(Arbiter.WORKER_BOOT_ERROR) from None
    return settings, gitlab, runtime


TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def secrets_of(settings: Settings) -> list[str]:
    """Every configured secret, for the log filter that masks them."""
    return [
        s
        for s in (
            settings.gitlab_token,
            settings.webhook_secret,
            settings.webhook_signing_secret,
            settings.session_secret,
            settings.oauth_client_secret,
        )
        if s
    ]


def _metrics_registry(store: Store) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(health.WorkspaceCollector(store))
    return registry
