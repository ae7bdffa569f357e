"""The bot as real processes: start-up failures, and the split for larger installs.

Cases: ``rwbot migrate`` and ``gunicorn "bot.app:create_app()"`` with a bad or
missing variable print one line naming it and exit non-zero, without a
traceback (and gunicorn stops instead of starting workers again); the web app
starts while GitLab is down, reports it on ``/readyz``, records merge request
and comment events, and learns its own user once GitLab is back.

Then one installation on PostgreSQL: gunicorn serving the web app (two
workers) and two ``rwbot worker`` processes, all logging at DEBUG. A burst of
deliveries for several merge requests, each delivered twice, ends with exactly
one container and one comment per merge request, posted once; each worker
listens for the intake's notifications (bot.wakeup); a merge GitLab
never sent a webhook for is found by the periodic resync of a running worker;
and after a whole flow no process logged the token or the webhook secret, and
no git command the workers ran (each one is logged at DEBUG with its exact
arguments) carried the credential.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
import sqlalchemy as sa

from bot import wakeup
from bot.store import Store, Workspace, utcnow
from tests import harness, services
from tests.gitlab_double import DEVELOPER, GitLabDouble

CONFIG = {
    "RWBOT_GITLAB_URL": "http://127.0.0.1:9",
    "RWBOT_GITLAB_TOKEN": "start-up-token",
    "RWBOT_WEBHOOK_SECRET": "start-up-secret",
    "RWBOT_PUBLIC_URL": "http://127.0.0.1:8080",
}
#: A running worker's resync period: short, so that a test sees one.
RESYNC_INTERVAL = 2.0


def _gunicorn(port: int, workers: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "gthread",
        "--threads",
        "4",
        # One control socket per user by default: tests would share it.
        "--no-control-socket",
        "bot.app:create_app()",
    ]


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _lines_naming(output: str, name: str) -> list[str]:
    return [line for line in output.splitlines() if name in line]


# -- start-up failures ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "env"),
    [
        ("RWBOT_DATABASE_URL", {**CONFIG, "RWBOT_DATABASE_URL": "nonsense"}),
        ("RWBOT_GITLAB_TOKEN", {k: v for k, v in CONFIG.items() if "TOKEN" not in k}),
    ],
)
def test_migrate_with_a_bad_variable_prints_one_line_naming_it(name, env):
    done = _run([sys.executable, "-m", "bot.cli", "migrate"], env)

    assert done.returncode == 2
    assert done.stdout == ""
    assert _lines_naming(done.stderr, name) == done.stderr.splitlines()
    assert len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "env"),
    [
        ("RWBOT_DATABASE_URL", {**CONFIG, "RWBOT_DATABASE_URL": "mysql://db/x"}),
        ("RWBOT_PUBLIC_URL", {k: v for k, v in CONFIG.items() if "PUBLIC" not in k}),
    ],
)
def test_gunicorn_with_a_bad_variable_stops_with_one_line_naming_it(name, env):
    # The worker fails to boot, and the master stops rather than forking new
    # ones (the run would otherwise time out). One worker: with two, gunicorn's
    # master now and then meets the second boot failure while it halts for the
    # first and prints a traceback of its own (gunicorn 27, Arbiter.stop).
    done = _run(_gunicorn(services.free_port(), workers=1), env)
    output = done.stdout + done.stderr

    assert done.returncode != 0
    assert "Traceback" not in output
    (line, *others) = _lines_naming(output, name)
    assert line.startswith(f"rwbot: {name}")
    assert others == []
    assert "Worker failed to boot" in output


def test_the_web_app_starts_while_gitlab_is_down_records_comments_and_learns_its_user(
    docker_host, tmp_path
):
    gitlab = GitLabDouble().start()
    gitlab.set_unreachable()
    port = services.free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **CONFIG,
        "RWBOT_GITLAB_URL": gitlab.url,
        "RWBOT_GITLAB_TOKEN": gitlab.token,
        "RWBOT_PUBLIC_URL": url,
        "RWBOT_DATABASE_URL": f"sqlite:///{tmp_path}/bot.db",
        "DOCKER_HOST": docker_host,
    }
    assert _run([sys.executable, "-m", "bot.cli", "migrate"], env).returncode == 0
    web = _Process("web", _gunicorn(port), env, tmp_path)
    try:
        services.wait_for(lambda: web.answers(f"{url}/healthz"), what="web app")
        ready = requests.get(f"{url}/readyz", timeout=5)
        mr_event = _post_hook(url, "Merge Request Hook", "mr_open.json", env)
        note_event = _post_hook(url, "Note Hook", "note_mr_create.json", env)

        gitlab.set_unreachable(False)
        # A comment event has it try again (in the background, at most every
        # few seconds).
        services.wait_for(
            lambda: (
                _post_hook(url, "Note Hook", "note_mr_create.json", env).ok
                and "bot user learnt" in web.log()
            ),
            timeout=30,
            what="the bot user learnt once GitLab is back",
        )
        ready_again = requests.get(f"{url}/readyz", timeout=5)
    finally:
        web.stop()
        gitlab.stop()

    assert ready.status_code == 503 and "gitlab" in ready.json()["problems"]
    assert mr_event.status_code == 200
    # Recorded even though it cannot yet tell its own comments from people's:
    # GitLab does not resend, and the workers skip the bot's own.
    assert note_event.status_code == 200
    assert ready_again.status_code == 200
    assert "Traceback" not in web.log()


def _post_hook(
    url: str, event: str, sample: str, env: dict[str, str]
) -> requests.Response:
    body = (services.ROOT / "tests" / "samples" / sample).read_bytes()
    return requests.post(
        f"{url}/webhooks/gitlab",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Gitlab-Event": event,
            "X-Gitlab-Token": env["RWBOT_WEBHOOK_SECRET"],
            "Idempotency-Key": str(uuid.uuid4()),
        },
        timeout=10,
    )


# -- the split: gunicorn and two workers on PostgreSQL -------------------------


class _Process:
    """A child process in its own session, its output in a log file."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log_dir: Path
    ) -> None:
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=services.ROOT,
            )

    def answers(self, url: str) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"exited {self.proc.returncode}: {self.log()[-2000:]}")
        try:
            return requests.get(url, timeout=2).ok
        except requests.ConnectionError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Split:
    """GitLab double, PostgreSQL, gunicorn with the web app, two workers."""

    def __init__(self, docker_host: str, postgres_url: str, tmp_path: Path) -> None:
        self.gitlab = GitLabDouble().start()
        self.url = f"http://127.0.0.1:{services.free_port()}"
        self.settings = harness.bot_settings(
            self.gitlab,
            self.url,
            services.create_database(postgres_url),
            claim_lease=30.0,
        ).with_overrides(resync_interval=RESYNC_INTERVAL)
        self.env = harness.BotProcess(
            self.settings,
            docker_host,
            tmp_path / "unused.log",
            extra_env={"RWBOT_LOG_LEVEL": "DEBUG"},
        ).env
        self.docker = docker.DockerClient(base_url=docker_host)
        self.store = Store(self.settings.database_url)
        self.processes: list[_Process] = []
        migrated = _run([sys.executable, "-m", "bot.cli", "migrate"], self.env)
        assert migrated.returncode == 0, migrated.stderr
        port = int(self.url.rsplit(":", 1)[1])
        self.processes.append(
            _Process("web", _gunicorn(port, workers=2), self.env, tmp_path)
        )
        for n in (1, 2):
            worker = [sys.executable, "-m", "bot.cli", "worker"]
            self.processes.append(_Process(f"worker{n}", worker, self.env, tmp_path))
        services.wait_for(
            lambda: self.processes[0].answers(f"{self.url}/readyz"),
            timeout=60,
            what="web app ready",
        )
        services.wait_for(
            lambda: all("worker started" in p.log() for p in self.processes[1:]),
            timeout=60,
            what="both workers started",
        )
        self.project = self.gitlab.add_project("team/app", files={"README.md": "hi\n"})
        dev = self.gitlab.add_user("dana", name="Dana Dev")
        self.gitlab.set_member(self.project, dev, DEVELOPER)

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        ours = {"label": [f"rwbot.instance={self.settings.instance}"]}
        for container in self.docker.containers.list(all=True, filters=ours):
            container.remove(force=True, v=True)
        for volume in self.docker.volumes.list(filters=ours):
            volume.remove(force=True)
        self.store.dispose()
        self.gitlab.stop()

    def deliver(self, payload: dict[str, Any]) -> None:
        answer = self.gitlab.deliver(
            f"{self.url}/webhooks/gitlab",
            payload,
            secret=self.settings.webhook_secret,
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        assert answer.status_code == 200, answer.text

    def open_mr(self, branch: str) -> dict[str, Any]:
        return self.gitlab.open_mr(self.project, branch, {"app.py": f"# {branch}\n"})

    def containers(self, mr: dict[str, Any]) -> list[Any]:
        return harness.mr_containers(self.docker, self.settings.instance, mr)

    def bot_notes(self, mr: dict[str, Any]) -> list[dict[str, Any]]:
        bot = self.gitlab.bot_user["id"]
        return [n for n in self.gitlab.notes(mr) if n["author"]["id"] == bot]

    def ready(self, mr: dict[str, Any]) -> bool:
        notes = self.bot_notes(mr)
        return bool(notes) and "ready" in notes[0]["body"]

    def settled(self) -> bool:
        with self.store.session() as s:
            due = s.scalar(
                sa.select(sa.func.count())
                .select_from(Workspace)
                .where(Workspace.due_at <= utcnow())
            )
        return due == 0

    def logs(self) -> str:
        return "".join(p.log() for p in self.processes)


@pytest.fixture(scope="module")
def split(docker_host, postgres_url, tmp_path_factory) -> Iterator[Split]:
    installation = Split(docker_host, postgres_url, tmp_path_factory.mktemp("split"))
    yield installation
    installation.close()


def test_each_worker_listens_for_the_intakes_notifications(split):
    # bot.wakeup's sessions, one per worker: a delivery's NOTIFY wakes them.
    def listening() -> int:
        with split.store.session() as s:
            return int(
                s.scalar(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                        " current_database() AND application_name = :name"
                    ),
                    {"name": wakeup.APPLICATION_NAME},
                )
            )

    services.wait_for(lambda: listening() == 2, what="two listening workers")


def test_a_burst_for_several_merge_requests_gives_each_one_workspace_and_comment(
    split,
):
    mrs = [split.open_mr(f"burst-{n}") for n in range(4)]
    split.gitlab.clear_log()
    payloads = [split.gitlab.mr_hook(mr, "open") for mr in mrs] * 2
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(split.deliver, payloads))

    services.wait_for(
        lambda: all(split.ready(mr) for mr in mrs) and split.settled(),
        timeout=180,
        what="every workspace ready",
    )

    for mr in mrs:
        (container,) = split.containers(mr)
        assert container.status == "running"
        assert container.labels["rwbot.generation"] == "1"
        assert len(split.bot_notes(mr)) == 1
    posts = split.gitlab.calls("POST", r"/merge_requests/\d+/notes$")
    posted_on = sorted(int(c.path.rsplit("/", 2)[1]) for c in posts)
    assert posted_on == sorted(mr["iid"] for mr in mrs)


def test_a_running_worker_resyncs_a_merge_nobody_sent_a_webhook_for(split):
    mr = split.open_mr("quiet-merge")
    split.deliver(split.gitlab.mr_hook(mr, "open"))
    services.wait_for(lambda: split.ready(mr), timeout=120, what="workspace ready")

    split.gitlab.merge(mr)  # and no webhook

    services.wait_for(
        lambda: not split.containers(mr) and "merged" in split.bot_notes(mr)[0]["body"],
        timeout=RESYNC_INTERVAL * 10 + 60,
        what="resync to remove the merged MR's workspace",
    )


def test_no_process_logs_a_secret_and_git_never_gets_the_token_in_argv(split):
    mr = split.open_mr("secrets")
    split.deliver(split.gitlab.mr_hook(mr, "open"))
    services.wait_for(lambda: split.ready(mr), timeout=120, what="workspace ready")
    token = split.settings.gitlab_token
    basic = base64.b64encode(f"oauth2:{token}".encode()).decode()

    text = split.logs()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    commands = [r["command"] for r in records if r["message"] == "running git"]

    # DEBUG was on in every kind of process, and git ran in the workers.
    assert any(r["message"] == "webhook recorded" for r in records)
    assert any(" fetch " in c for c in commands)
    for secret in (token, split.settings.webhook_secret, basic):
        assert secret not in text
    # Nothing even tried: the masking filter had nothing to hide.
    assert "[MASKED]" not in text
    (remote,) = {c for c in commands if " remote add origin " in c}
    assert "@" not in remote.rsplit(" ", 1)[1]
