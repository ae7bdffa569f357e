"""``rwbot``: the command line. A thin shell over the library.

- ``rwbot serve``: everything one host needs: gunicorn serving the web app, and
  the reconciler in the same process.
- ``rwbot worker``: the reconciler alone, for installs that run the web app with
  ``gunicorn "bot.app:create_app()"`` and scale the two separately.
- ``rwbot migrate``: create or upgrade the database schema.
- ``rwbot hooks install PROJECT``: register (or update) the bot's webhook.
- ``rwbot audit``: print the audit log (commands, joins, revocations, lifecycle).
- ``rwbot doctor [PROJECT…]``: check the installation, one line per check.

Errors the bot raises on purpose become one line on stderr and exit code 2
(configuration) or 1 (anything else).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import DBAPIError

from bot import logs
from bot import settings as settings_mod
from bot.errors import BotError, ConfigError
from bot.settings import Settings

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rwbot", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="web app and reconciler in one process")
    serve.add_argument("--bind", default="0.0.0.0:8080")
    serve.add_argument("--threads", type=int, default=64)
    sub.add_parser("worker", help="the reconciler alone")
    sub.add_parser("migrate", help="create or upgrade the database schema")
    hooks = sub.add_parser("hooks", help="manage the project webhook")
    hooks_sub = hooks.add_subparsers(dest="hooks_command", required=True)
    install = hooks_sub.add_parser("install", help="register or update the webhook")
    install.add_argument("project", help="project id or path, e.g. group/app")
    audit_cmd = sub.add_parser("audit", help="print the audit log, newest first")
    audit_cmd.add_argument("--project", type=int, help="only this project id")
    audit_cmd.add_argument("--mr", type=int, help="only this merge request iid")
    audit_cmd.add_argument("--limit", type=int, default=50)
    doctor_cmd = sub.add_parser("doctor", help="check the installation")
    doctor_cmd.add_argument(
        "projects", nargs="*", help="project ids or paths (default: RWBOT_PROJECTS)"
    )
    args = parser.parse_args(argv)

    try:
        settings = settings_mod.from_env()
        from bot.app import secrets_of

        logs.configure(settings.log_format, settings.log_level, secrets_of(settings))
        if args.command == "serve":
            return serve_forever(settings, args.bind, args.threads)
        if args.command == "worker":
            return work_forever(settings)
        if args.command == "migrate":
            from bot.store import Store

            Store(settings.database_url).migrate()
            print("database schema is up to date")
            return 0
        if args.command == "hooks":
            return install_hook(settings, args.project)
        if args.command == "doctor":
            from bot import doctor

            return doctor.main(settings, args.projects)
        if args.command == "audit":
            from bot import audit
            from bot.store import Store

            for entry in audit.latest(
                Store(settings.database_url), args.project, args.mr, args.limit
            ):
                print(entry.line())
            return 0
    except ConfigError as err:
        print(f"rwbot: {err}", file=sys.stderr)
        return 2
    except DBAPIError as err:
        # Raised on the first connection (migrations at start): the server
        # is down or the file cannot be opened. The driver's first line says
        # which; it never holds the password.
        reason = str(err.orig).strip().splitlines()[0] if err.orig else "unusable"
        print(
            f"rwbot: database unavailable (RWBOT_DATABASE_URL): {reason}",
            file=sys.stderr,
        )
        return 1
    except BotError as err:
        print(f"rwbot: {err}", file=sys.stderr)
        return 1
    return 1


def install_hook(settings: Settings, project_ref: str) -> int:
    from bot.gitlab import Client

    gitlab = Client(settings)
    project = gitlab.project(int(project_ref) if project_ref.isdigit() else project_ref)
    url = f"{settings.public_url}/webhooks/gitlab"
    hook = gitlab.install_hook(
        project, url, settings.webhook_secret, settings.webhook_signing_secret
    )
    verb = "registered" if hook.created else "updated"
    print(f"{verb} webhook {hook.id} on {project.path} -> {url}")
    return 0


def build(settings: Settings) -> tuple[Settings, Any, Any, Any]:
    """The store, GitLab client and runtime for ``settings``; learns the bot's
    user id so that its own comments are ignored."""
    from bot import runtime as runtimes
    from bot.gitlab import Client
    from bot.store import Store

    store = Store(settings.database_url)
    store.migrate()
    gitlab = Client(settings)
    settings = settings.with_overrides(bot_user_id=gitlab.whoami().id)
    gitlab = Client(settings)
    runtime = runtimes.from_settings(settings)
    return settings, store, gitlab, runtime


def work_forever(settings: Settings) -> int:
    from bot import wakeup
    from bot.reconciler import Reconciler

    settings, store, gitlab, runtime = build(settings)
    stop = threading.Event()
    # On PostgreSQL the intake's NOTIFY sets it (bot.wakeup), so a new MR is
    # picked up at once instead of after the idle pause.
    wake = threading.Event()

    def stop_worker(*_: object) -> None:
        stop.set()
        wake.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_worker)
    listener = wakeup.listen(store, wake)
    log.info("worker started", extra={"woken_by_notify": listener is not None})
    try:
        Reconciler(settings, store, gitlab, runtime).run_forever(stop, wake=wake)
    finally:
        if listener is not None:
            listener.close()
    return 0


def serve_forever(settings: Settings, bind: str, threads: int) -> int:
    from gunicorn.app.base import BaseApplication

    from bot import wakeup
    from bot.app import create_app
    from bot.reconciler import Reconciler

    settings, store, gitlab, runtime = build(settings)
    stop = threading.Event()
    # The receiver sets it after committing a delivery that needs work, so the
    # reconciler starts on a new MR at once instead of after its idle pause.
    wake = threading.Event()

    def stop_reconciler() -> None:
        stop.set()
        wake.set()

    def start_reconciler(_worker: Any) -> None:
        # Runs inside the gunicorn worker process, after the fork: connections
        # opened by the parent (migrations) must not be shared with it.
        store.engine.dispose(close=False)
        # Other replicas' deliveries too, on PostgreSQL.
        wakeup.listen(store, wake)
        reconciler = Reconciler(settings, store, gitlab, runtime)
        threading.Thread(
            target=reconciler.run_forever,
            args=(stop,),
            kwargs={"wake": wake},
            name="reconciler",
            daemon=True,
        ).start()

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", bind)
            self.cfg.set("workers", 1)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", threads)
            self.cfg.set("post_worker_init", start_reconciler)
            self.cfg.set("worker_exit", lambda _arbiter, _worker: stop_reconciler())
            # gunicorn's control socket sits at one path per user: two bots
            # (or a bot and tests) on a host would share it.
            self.cfg.set("control_socket_disable", True)
            self.cfg.set("accesslog", None)

        def load(self) -> Any:
            return create_app(
                settings, store=store, gitlab=gitlab, runtime=runtime, wake=wake
            )

    log.info("serving", extra={"bind": bind})
    Server().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
