"""A whole installation for end-to-end tests: GitLab double, bot, real Podman.

:class:`Stack` runs the bot in-process (the Flask app on a threaded werkzeug
server, the reconciler driven by the test) so a test can step it
deterministically. :class:`BotProcess` runs ``rwbot serve`` as a real child
process, for tests that kill it with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import docker
import requests
import sqlalchemy as sa
from werkzeug.serving import make_server

from bot import comments
from bot.app import create_app
from bot.gitlab import Client
from bot.lifecycle import Phase
from bot.reconciler import Reconciler
from bot.runtime.docker import DockerRuntime
from bot.settings import Settings
from bot.store import Store, Workspace, utcnow
from tests import services
from tests.gitlab_double import GitLabDouble

WEBHOOK_SECRET = "e2e-webhook-secret"


def bot_settings(
    gitlab: GitLabDouble, public_url: str, db: str, **extra: Any
) -> Settings:
    return Settings(
        gitlab_url=gitlab.url,
        gitlab_token=gitlab.token,
        webhook_secret=WEBHOOK_SECRET,
        public_url=public_url,
        database_url=db,
        workspace_image=extra.pop("workspace_image", services.WORKSPACE_IMAGE),
        workspace_network=extra.pop("workspace_network", "none"),
        workspace_memory="512m",
        instance=f"t{uuid.uuid4().hex[:10]}",
        resync_interval=3600,
        retry_base=0.05,
        retry_max=0.5,
        bot_user_id=gitlab.bot_user["id"],
        **extra,
    )


class Stack:
    def __init__(self, docker_host: str, tmp_path: Path, **extra: Any) -> None:
        self.gitlab = GitLabDouble()
        self.gitlab.start()
        self._server = make_server("127.0.0.1", 0, self._dispatch, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        client_id, client_secret = self.gitlab.register_oauth_app(
            f"{self.url}/auth/callback", pkce_required=True
        )
        database_url = extra.pop("database_url", f"sqlite:///{tmp_path}/bot.db")
        self.settings = bot_settings(
            self.gitlab,
            self.url,
            database_url,
            oauth_client_id=client_id,
            oauth_client_secret=client_secret,
            **extra,
        )
        self.store = Store(self.settings.database_url)
        self.store.migrate()
        self.docker = docker.DockerClient(base_url=docker_host)
        self.runtime = DockerRuntime(self.docker, self.settings.instance)
        self.client = Client(self.settings)
        self.app = create_app(
            self.settings, store=self.store, gitlab=self.client, runtime=self.runtime
        )
        self.reconciler = Reconciler(
            self.settings, self.store, self.client, self.runtime
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _dispatch(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)

    def close(self) -> None:
        for listed in list(self.runtime.list_ours()):
            self.runtime.remove(listed.key)
        self._server.shutdown()
        self.gitlab.stop()
        self.store.dispose()

    # -- driving --------------------------------------------------------------

    def deliver(self, payload: dict[str, Any], **kwargs: Any) -> requests.Response:
        return self.gitlab.deliver(
            f"{self.url}/webhooks/gitlab", payload, secret=WEBHOOK_SECRET, **kwargs
        )

    def settle(self, timeout: float = 120.0) -> None:
        """Run the reconciler until no workspace is due now (timers set for
        later, like an idle stop hours away, do not count)."""

        def settled() -> bool:
            self.reconciler.run_once()
            with self.store.session() as s:
                due = s.scalar(
                    sa.select(sa.func.count())
                    .select_from(Workspace)
                    .where(Workspace.due_at <= utcnow())
                )
            return due == 0

        services.wait_for(settled, timeout=timeout, what="reconciler to settle")

    def settle_ready(self, mr: dict[str, Any], timeout: float = 120.0) -> None:
        """Run the reconciler until ``mr``'s workspace is ready, then settle.

        A start the runtime answered with a passing error (Podman now and then
        fails one with a 500) is due again only after its backoff, so
        :meth:`settle` alone could return with the workspace still pending.
        """

        def ready() -> bool:
            self.reconciler.run_once()
            return self.row(mr).phase == Phase.READY

        services.wait_for(ready, timeout=timeout, what="the workspace to be ready")
        self.settle(timeout)

    # -- looking --------------------------------------------------------------

    def bot_notes(self, mr: dict[str, Any]) -> list[dict[str, Any]]:
        marker = comments.marker(mr["project_id"], mr["iid"])
        return [
            n
            for n in self.gitlab.notes(mr)
            if n["author"]["id"] == self.gitlab.bot_user["id"] and marker in n["body"]
        ]

    def comment(self, mr: dict[str, Any]) -> str:
        notes = self.bot_notes(mr)
        assert len(notes) == 1, f"expected one bot comment, found {len(notes)}"
        return str(notes[0]["body"])

    def containers(self, mr: dict[str, Any]) -> list[Any]:
        return mr_containers(self.docker, self.settings.instance, mr)

    def volumes(self, mr: dict[str, Any]) -> list[Any]:
        labels = [
            f"rwbot.instance={self.settings.instance}",
            f"rwbot.project-id={mr['project_id']}",
            f"rwbot.mr-iid={mr['iid']}",
        ]
        # Podman ORs label filters on volumes: check every label here.
        wanted = dict(label.split("=", 1) for label in labels)
        return [
            v
            for v in self.docker.volumes.list(filters={"label": labels})
            if wanted.items() <= (v.attrs.get("Labels") or {}).items()
        ]

    def run_in(self, mr: dict[str, Any], *argv: str, user: str = "root") -> str:
        (container,) = self.containers(mr)
        code, out = container.exec_run(list(argv), user=user)
        assert code == 0, out
        return str(out.decode(errors="replace"))

    def row(self, mr: dict[str, Any]) -> Workspace:
        with self.store.session() as s:
            return s.scalars(
                sa.select(Workspace).where(
                    Workspace.project_id == mr["project_id"],
                    Workspace.mr_iid == mr["iid"],
                )
            ).one()

    def make_due(self) -> None:
        with self.store.session() as s:
            s.execute(sa.update(Workspace).values(due_at=utcnow()))


class BotProcess:
    """``rwbot serve`` as a child process that a test may SIGKILL and restart.

    The environment is built from ``settings`` (OAuth client included when set)
    and kept in :attr:`env`, so other ``rwbot`` commands can be run with the same
    configuration; ``extra_env`` adds or overrides variables.
    """

    def __init__(
        self,
        settings: Settings,
        docker_host: str,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
        threads: int = 16,
    ) -> None:
        self.settings = settings
        #: gunicorn worker threads; an open terminal holds one for its lifetime.
        self.threads = threads
        self.port = int(settings.public_url.rsplit(":", 1)[1])
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/root"),
            "DOCKER_HOST": docker_host,
            "RWBOT_GITLAB_URL": settings.gitlab_url,
            "RWBOT_GITLAB_TOKEN": settings.gitlab_token,
            "RWBOT_WEBHOOK_SECRET": settings.webhook_secret,
            "RWBOT_PUBLIC_URL": settings.public_url,
            "RWBOT_DATABASE_URL": settings.database_url,
            "RWBOT_WORKSPACE_IMAGE": settings.workspace_image,
            "RWBOT_WORKSPACE_NETWORK": settings.workspace_network,
            "RWBOT_WORKSPACE_MEMORY": settings.workspace_memory,
            "RWBOT_INSTANCE": settings.instance,
            "RWBOT_RESYNC_INTERVAL": str(settings.resync_interval),
            # A claim held by a killed process blocks its row for this long.
            "RWBOT_CLAIM_LEASE": str(settings.claim_lease),
            "RWBOT_RETRY_BASE": str(settings.retry_base),
            "RWBOT_RETRY_MAX": str(settings.retry_max),
            "RWBOT_LOG_FORMAT": "json",
        }
        if settings.oauth_client_id and settings.oauth_client_secret:
            self.env["RWBOT_OAUTH_CLIENT_ID"] = settings.oauth_client_id
            self.env["RWBOT_OAUTH_CLIENT_SECRET"] = settings.oauth_client_secret
        self.env.update(extra_env or {})
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bot.cli",
                    "serve",
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    "--threads",
                    str(self.threads),
                ],
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        services.wait_for(
            lambda: self._exited() or self._healthy(),
            timeout=60,
            what="bot to answer /healthz",
        )
        if self._exited():
            raise RuntimeError(f"bot exited: {self.log_tail(2000)}")

    def _exited(self) -> bool:
        assert self.proc is not None
        return self.proc.poll() is not None

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.settings.public_url}/healthz", timeout=1).ok
        except requests.ConnectionError:
            return False

    def kill(self) -> None:
        """SIGKILL the whole process group (gunicorn master and worker)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> None:
        """SIGKILL, then start again on the same port and database."""
        self.kill()
        self.start()

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the bot's log, for failure messages."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def mr_containers(client: Any, instance: str, mr: dict[str, Any]) -> list[Any]:
    """Every container (running or not) of ``mr`` under the bot ``instance``."""
    labels = [
        f"rwbot.instance={instance}",
        f"rwbot.project-id={mr['project_id']}",
        f"rwbot.mr-iid={mr['iid']}",
    ]
    return client.containers.list(all=True, filters={"label": labels})
