"""Faults in what the bot depends on: nothing acknowledged is lost, nothing doubled.

The bot runs against the GitLab double and real Podman, as a ``rwbot serve``
child process (:class:`tests.harness.BotProcess`) where it must keep running
through the fault, or in-process (:class:`tests.harness.Stack`) where the test
steps the reconciler.

Cases:

- PostgreSQL is restarted under a running bot: deliveries before, during (the
  bot answers 503 and the sender retries, as GitLab does) and after the restart
  are all recorded and take effect; the same bot process reconnects; one
  container and one comment per merge request.
- GitLab is unreachable for a while: the bot process stays up, the comments are
  right once GitLab is back, and the retries of 20 merge requests that failed
  together are spread out by the backoff's jitter instead of arriving at once.
- The workspace image is missing: the comment says failed and names the image;
  once the image exists, ``/workspace restart`` brings the workspace up.
- An exec fails while the workspace is prepared (the devfile's image gives
  the shared group's gid to a group of its own, so ``rwctl init`` refuses):
  the comment says failed with the tool's output; once the devfile names
  another image, ``/workspace restart`` brings it up. (A failing postStart
  command is a note in the comment, not a failure: the workspace still works;
  and it runs as the devfile account, which cannot break the bot's tool.)
- The Podman API is unreachable: after a few attempts the comment says the bot
  is retrying and why; the running bot logs a retry of the workspace, never a
  failed pass, and once Podman is back the workspace converges, without
  restarting the bot.
- A flood of deliveries from several threads for 20 merge requests (opens,
  pushes, merges, and resends with the same Idempotency-Key), with the bot
  SIGKILLed and restarted in the middle and refused deliveries re-sent until
  acknowledged: every acknowledged key is recorded, every open merge request has
  one container and one comment, every merged one no container. The count is
  :data:`FLOOD`: all 10,000 fit in the time, at 270-300 acknowledged
  deliveries per second on a 2-core host (kill and restart included); the test
  takes about 50 s.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
import sqlalchemy as sa

from bot import accounts, comments
from bot.store import Delivery, Store, Workspace
from tests import harness, services
from tests.gitlab_double import DEVELOPER, GitLabDouble

#: Short enough that a claim held by a killed bot runs out within a test.
CLAIM_LEASE = 10.0
CONVERGE_TIMEOUT = CLAIM_LEASE + 90
#: Deliveries in the flood test.
FLOOD = 10_000


class Installation:
    """The GitLab double, Podman, and ``rwbot serve`` as a child process."""

    def __init__(
        self,
        docker_host: str,
        tmp_path: Path,
        *,
        database_url: str | None = None,
        env: dict[str, str] | None = None,
        **settings: Any,
    ) -> None:
        self.gitlab = GitLabDouble().start()
        public_url = f"http://127.0.0.1:{services.free_port()}"
        self.settings = harness.bot_settings(
            self.gitlab,
            public_url,
            database_url or f"sqlite:///{tmp_path}/bot.db",
            claim_lease=CLAIM_LEASE,
            **settings,
        )
        self.hook_url = f"{public_url}/webhooks/gitlab"
        self.docker = docker.DockerClient(base_url=docker_host)
        self.bot = harness.BotProcess(
            self.settings, docker_host, tmp_path / "bot.log", extra_env=env
        )
        self.bot.start()
        self.store = Store(self.settings.database_url)
        self.project = self.gitlab.add_project("team/app", files={"README.md": "hi\n"})
        self.dev = self.gitlab.add_user("dana", name="Dana Dev")
        self.gitlab.set_member(self.project, self.dev, DEVELOPER)

    def close(self) -> None:
        self.bot.stop()
        for container in self.docker.containers.list(all=True, filters=self._ours()):
            container.remove(force=True, v=True)
        for volume in self.docker.volumes.list(filters=self._ours()):
            volume.remove(force=True)
        self.store.dispose()
        self.gitlab.stop()

    # -- driving --------------------------------------------------------------

    def deliver(
        self,
        payload: dict[str, Any],
        key: str | None = None,
        answers: list[int | str] | None = None,
    ) -> str:
        """Deliver until the bot answers 2xx, as GitLab retries a failed hook;
        return the Idempotency-Key. Every answer (or "refused") goes to
        ``answers``."""
        key = key or str(uuid.uuid4())

        def attempt() -> bool:
            try:
                answer = self.gitlab.deliver(
                    self.hook_url,
                    payload,
                    secret=harness.WEBHOOK_SECRET,
                    headers={"Idempotency-Key": key},
                )
            except requests.RequestException:
                if answers is not None:
                    answers.append("refused")
                return False
            if answers is not None:
                answers.append(answer.status_code)
            return answer.ok

        services.wait_for(attempt, timeout=90, what="the delivery to be acknowledged")
        return key

    def wait(self, condition: Callable[[], object], what: str) -> None:
        """Wait for ``condition``; on timeout, show the end of the bot's log."""
        try:
            services.wait_for(condition, timeout=CONVERGE_TIMEOUT, what=what)
        except TimeoutError as err:
            raise AssertionError(
                f"{err}\n--- bot log ---\n{self.bot.log_tail()}"
            ) from err

    # -- looking --------------------------------------------------------------

    def _ours(self, mr: dict[str, Any] | None = None) -> dict[str, list[str]]:
        labels = [f"rwbot.instance={self.settings.instance}"]
        if mr is not None:
            labels += [
                f"rwbot.project-id={mr['project_id']}",
                f"rwbot.mr-iid={mr['iid']}",
            ]
        return {"label": labels}

    def bot_notes(self, mr: dict[str, Any]) -> list[dict[str, Any]]:
        marker = comments.marker(mr["project_id"], mr["iid"])
        return [
            n
            for n in self.gitlab.notes(mr)
            if n["author"]["id"] == self.gitlab.bot_user["id"] and marker in n["body"]
        ]

    def comment(self, mr: dict[str, Any]) -> str:
        notes = self.bot_notes(mr)
        return str(notes[-1]["body"]) if notes else ""

    def containers(self, mr: dict[str, Any]) -> list[Any]:
        return list(self.docker.containers.list(all=True, filters=self._ours(mr)))

    def recorded_keys(self) -> set[str]:
        with self.store.session() as s:
            return set(s.scalars(sa.select(Delivery.key)))

    def healthy(self) -> bool:
        return requests.get(f"{self.settings.public_url}/healthz", timeout=5).ok

    def rows(self) -> list[Workspace]:
        with self.store.session() as s:
            return list(s.scalars(sa.select(Workspace)))

    def settled(self, mr: dict[str, Any], *words: str, containers: int = 1) -> bool:
        """One comment saying ``words``, and ``containers`` containers, running."""
        found = self.containers(mr)
        return (
            len(found) == containers
            and all(c.status == "running" for c in found)
            and len(self.bot_notes(mr)) == 1
            and all(w in self.comment(mr) for w in words)
        )


@pytest.fixture
def postgres() -> Iterator[services.PostgresServer]:
    """A PostgreSQL server of this test's own, which it may restart."""
    server = services.PostgresServer().start()
    yield server
    server.close()


def test_a_postgresql_restart_loses_no_acknowledged_delivery(
    docker_host: str, tmp_path: Path, postgres: services.PostgresServer
) -> None:
    inst = Installation(
        docker_host, tmp_path, database_url=services.create_database(postgres.url)
    )
    try:
        gitlab = inst.gitlab
        mrs = [
            gitlab.open_mr(inst.project, f"f{n}", {f"f{n}.txt": "x\n"}, author=inst.dev)
            for n in range(3)
        ]
        pid = inst.bot.proc.pid if inst.bot.proc else None
        keys = [inst.deliver(gitlab.mr_hook(mrs[0], "open"))]
        # Ready first: the web and reconciler pools both hold connections
        # that the restart will break.
        inst.wait(lambda: inst.settled(mrs[0], "ready"), "!1 to be ready")

        postgres.stop()
        answers: list[int | str] = []
        with ThreadPoolExecutor(max_workers=2) as pool:
            during = [
                pool.submit(
                    inst.deliver, gitlab.mr_hook(mrs[1], "open"), None, answers
                ),
                # A resend of the first delivery, while the store is down.
                pool.submit(inst.deliver, gitlab.mr_hook(mrs[0], "open"), keys[0]),
            ]
            services.wait_for(
                lambda: answers.count(503) >= 2, what="503 answers while it is down"
            )
            assert inst.healthy()
            postgres.start()
            keys += [f.result() for f in during]

        gitlab.push(mrs[0], {"f0.txt": "y\n"})
        keys.append(inst.deliver(gitlab.mr_hook(mrs[0], "update")))
        keys.append(inst.deliver(gitlab.mr_hook(mrs[2], "open")))

        head = gitlab.mr(mrs[0])["sha"]
        inst.wait(lambda: inst.settled(mrs[0], "Behind", head[:8]), "!1 behind")
        for mr in mrs[1:]:
            inst.wait(lambda mr=mr: inst.settled(mr, "ready"), f"!{mr['iid']} ready")
        assert set(keys) <= inst.recorded_keys()
        assert "refused" not in answers  # the bot itself never went away
        assert inst.bot.proc is not None and inst.bot.proc.pid == pid
        assert inst.bot.proc.poll() is None
    finally:
        inst.close()


class Timed:
    """WSGI middleware: when each request reached the GitLab double."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        with self.lock:
            self.seen.append(
                (time.monotonic(), environ["REQUEST_METHOD"], environ["PATH_INFO"])
            )
        return self.app(environ, start_response)


def test_gitlab_unreachable_the_bot_stays_up_and_retries_spread_out(
    docker_host: str, tmp_path: Path
) -> None:
    # Backoff (bot.reconciler.backoff): attempt n waits uniform[c/2, c] with
    # c = min(RETRY_MAX, RETRY_BASE * 2**(n-1)); here c reaches 4 s at the 5th.
    base, cap = 0.25, 4.0
    inst = Installation(
        docker_host,
        tmp_path,
        env={
            "RWBOT_RETRY_BASE": str(base),
            "RWBOT_RETRY_MAX": str(cap),
            "RWBOT_START_DRAFTS": "false",
        },
    )
    try:
        gitlab = inst.gitlab
        timed = Timed(gitlab.app.wsgi_app)
        gitlab.app.wsgi_app = timed  # type: ignore[method-assign]
        # Drafts: each has a comment and no container, so every retry below
        # is about GitLab alone.
        mrs = [
            gitlab.open_mr(
                inst.project, f"d{n}", {f"d{n}.txt": "x\n"}, author=inst.dev, draft=True
            )
            for n in range(20)
        ]
        for mr in mrs:
            inst.deliver(gitlab.mr_hook(mr, "open"))
        for mr in mrs:
            inst.wait(
                lambda mr=mr: inst.settled(mr, "draft", containers=0), "draft comments"
            )
        pid = inst.bot.proc.pid if inst.bot.proc else None

        gitlab.set_unreachable(True)
        heads = {mr["iid"]: gitlab.push(mr, {"new.txt": "y\n"}) for mr in mrs}
        for mr in mrs:
            inst.deliver(gitlab.mr_hook(mr, "update"))
        # Long enough for every MR to retry at the cap a few times, so each
        # has its own phase: at least 7 failed attempts each.
        inst.wait(
            lambda: all(r.attempts >= 7 for r in inst.rows()),
            "every MR to have failed 7 times",
        )
        assert inst.bot.proc is not None and inst.bot.proc.poll() is None
        assert inst.healthy()

        recovered = time.monotonic()
        gitlab.set_unreachable(False)
        for mr in mrs:
            inst.wait(
                lambda mr=mr: inst.settled(mr, heads[mr["iid"]][:8], containers=0),
                f"!{mr['iid']}'s comment to show its new head",
            )

        assert inst.bot.proc.pid == pid and inst.bot.proc.poll() is None
        assert "reconciler pass failed" not in inst.bot.log_tail(10**7)
        with timed.lock:
            after = [
                (t - recovered, path) for t, _, path in timed.seen if t > recovered
            ]
        first: dict[int, float] = {}
        for at, path in after:
            for mr in mrs:
                if f"/merge_requests/{mr['iid']}/notes" in path:
                    first.setdefault(mr["iid"], at)
        assert len(first) == len(mrs)
        per_second = Counter(int(at) for at, _ in after)
        print(
            "requests to GitLab per second after recovery:",
            dict(sorted(per_second.items())),
        )
        print("first comment edit per MR (s after recovery):", sorted(first.values()))
        # Each MR's next try lies somewhere in its own [c/2, c] = [2, 4] s
        # interval; the reconciler picks up what fell due every 0.5 s when
        # idle. So the 20 first edits spread over up to 4 s in up to 8 groups
        # (seen here: 7, 7, 2, 2, 1, 1): no 100 ms window holds two thirds of
        # them, and they span more than one poll interval.
        times = sorted(first.values())
        busiest = max(sum(1 for u in times if t <= u < t + 0.1) for t in times)
        assert busiest <= len(mrs) * 2 // 3, times
        assert times[-1] - times[0] >= 1.0, times
    finally:
        inst.close()


# -- runtime failures, stepped in-process ---------------------------------------


def _command(stack: harness.Stack, mr: dict[str, Any], user: Any, body: str) -> None:
    note = stack.gitlab.add_note(mr, user, body)
    assert stack.deliver(stack.gitlab.note_hook(note)).ok


def _converge_until(stack: harness.Stack, done: Callable[[], bool]) -> None:
    def converged() -> bool:
        stack.reconciler.run_once()
        return done()

    services.wait_for(converged, timeout=120, what="the workspace to converge")


def test_a_missing_image_fails_with_its_name_and_restart_recovers(
    docker_host: str, tmp_path: Path
) -> None:
    image = f"localhost/rwbot-workspace:missing-{uuid.uuid4().hex[:8]}"
    stack = harness.Stack(docker_host, tmp_path, workspace_image=image)
    try:
        project = stack.gitlab.add_project("team/app")
        dev = stack.gitlab.add_user("dana")
        stack.gitlab.set_member(project, dev, DEVELOPER)
        mr = stack.gitlab.open_mr(project, "feature", {"a.txt": "a\n"}, author=dev)
        stack.deliver(stack.gitlab.mr_hook(mr, "open"))
        stack.settle()
        body = stack.comment(mr)
        assert "failed" in body and image in body, body
        assert stack.containers(mr) == []

        subprocess.run(
            ["podman", "tag", services.WORKSPACE_IMAGE, image],
            env=services.podman_env(),
            check=True,
        )
        _command(stack, mr, dev, "/workspace restart")
        stack.settle()
        assert "ready" in stack.comment(mr)
        assert [c.status for c in stack.containers(mr)] == ["running"]
    finally:
        stack.close()
        subprocess.run(
            ["podman", "untag", image, image],
            env=services.podman_env(),
            check=False,
            capture_output=True,
        )


#: A postStart command that leaves the bot's tool folder a plain file, so the
#: exec that marks the workspace prepared (``touch /opt/rwbot/.ready``) fails.
#: An image whose /etc/group gives the shared group's gid to another group,
#: so that `rwctl init` refuses to prepare a workspace of it.
GID_TAKEN_IMAGE = "localhost/rwbot-gid-taken:test"
IMAGE_DEVFILE = """\
schemaVersion: 2.2.0
components:
  - name: tooling
    container:
      image: {image}
"""


@pytest.fixture
def gid_taken_image(docker_host: str) -> Iterator[str]:
    client = docker.DockerClient(base_url=docker_host)
    line = f"other:x:{accounts.SHARED_GID}:"
    script = f"echo '{line}' >>/etc/group"
    maker = client.containers.run(
        services.WORKSPACE_IMAGE, ["sh", "-c", script], detach=True
    )
    try:
        assert maker.wait()["StatusCode"] == 0
        repository, tag = GID_TAKEN_IMAGE.rsplit(":", 1)
        maker.commit(repository=repository, tag=tag)
    finally:
        maker.remove(force=True)
    yield GID_TAKEN_IMAGE
    client.images.remove(GID_TAKEN_IMAGE, force=True)
    client.close()


def test_an_exec_failing_at_start_fails_with_its_output_and_restart_recovers(
    docker_host: str, tmp_path: Path, gid_taken_image: str
) -> None:
    stack = harness.Stack(docker_host, tmp_path)
    try:
        project = stack.gitlab.add_project("team/app")
        dev = stack.gitlab.add_user("dana")
        stack.gitlab.set_member(project, dev, DEVELOPER)
        devfile = IMAGE_DEVFILE.format(image=gid_taken_image)
        mr = stack.gitlab.open_mr(
            project, "feature", {".devfile.yaml": devfile}, author=dev
        )
        stack.deliver(stack.gitlab.mr_hook(mr, "open"))
        # Not settle(): Podman now and then answers a start with a 500 (a
        # process gone from /proc), which is retried later, not due now.
        _converge_until(stack, lambda: stack.row(mr).phase in ("failed", "ready"))
        body = stack.comment(mr)
        assert "failed" in body and "preparing the workspace failed" in body, body
        assert "gid-taken" in body, body  # rwctl init's own words

        fixed = IMAGE_DEVFILE.format(image=services.WORKSPACE_IMAGE)
        stack.gitlab.push(mr, {".devfile.yaml": fixed}, "Use the team's image")
        stack.deliver(stack.gitlab.mr_hook(mr, "update"))
        _command(stack, mr, dev, "/workspace restart")
        _converge_until(stack, lambda: "ready" in stack.comment(mr))
        (container,) = stack.containers(mr)
        assert container.status == "running"
        assert container.exec_run(["test", "-f", "/opt/rwbot/.ready"]).exit_code == 0
    finally:
        stack.close()


@pytest.fixture
def podman() -> Iterator[services.PodmanService]:
    """A Podman API service of this test's own, which it may stop and start."""
    service = services.PodmanService().start()
    yield service
    service.close()


def test_an_unreachable_runtime_is_reported_as_retrying(
    tmp_path: Path, podman: services.PodmanService
) -> None:
    stack = harness.Stack(podman.url, tmp_path)
    try:
        project = stack.gitlab.add_project("team/app")
        stack.gitlab.add_user("dana")
        mr = stack.gitlab.open_mr(project, "feature", {"a.txt": "a\n"})
        podman.stop()
        stack.deliver(stack.gitlab.mr_hook(mr, "open"))

        def failed_three_times() -> bool:
            stack.reconciler.run_once()
            return stack.row(mr).attempts >= 3

        # With a 0.05 s backoff base, three attempts take well under a second.
        services.wait_for(failed_three_times, timeout=5, what="three failed attempts")
        body = stack.comment(mr)
        assert "retrying" in body and "runtime unreachable" in body, body
    finally:
        podman.start()
        stack.close()


def test_an_unreachable_runtime_converges_once_back_without_a_restart(
    tmp_path: Path, podman: services.PodmanService
) -> None:
    inst = Installation(podman.url, tmp_path)
    try:
        mr = inst.gitlab.open_mr(inst.project, "feature", {"a.txt": "a\n"})
        pid = inst.bot.proc.pid if inst.bot.proc else None
        podman.stop()
        inst.deliver(inst.gitlab.mr_hook(mr, "open"))
        inst.wait(
            # The runtime's errors are translated (bot/runtime/docker.py): the
            # pass reschedules the row instead of escaping as a bug.
            lambda: "workspace will be retried" in inst.bot.log_tail(10**7),
            "the bot to hit the unreachable runtime",
        )
        assert "reconciler pass failed" not in inst.bot.log_tail(10**7)
        assert inst.healthy()

        podman.start()
        inst.wait(
            lambda: inst.settled(mr, "ready"), "the workspace once Podman is back"
        )
        assert inst.bot.proc is not None and inst.bot.proc.pid == pid
        assert inst.bot.proc.poll() is None
    finally:
        if not podman.running:
            podman.start()
        inst.close()


# -- a flood with a kill ----------------------------------------------------------


def _flood_plan(
    gitlab: GitLabDouble, mrs: list[dict[str, Any]], merged: int, count: int
) -> list[tuple[bytes, str]]:
    """``count`` (body, Idempotency-Key) sends over ``mrs``: per MR its open and
    two pushes, the first ``merged`` MRs merged last; a third of the sends are
    resends of an earlier key with the same body. Shuffled."""
    rng = random.Random(11)
    bodies: list[bytes] = []
    for i, mr in enumerate(mrs):
        bodies.append(json.dumps(gitlab.mr_hook(mr, "open")).encode())
        for push in range(2):
            # A later second on GitLab's clock: the newer event is newer.
            gitlab.advance_clock(1)
            gitlab.push(mr, {f"m{i}.txt": f"{push}\n"})
            bodies.append(json.dumps(gitlab.mr_hook(mr, "update")).encode())
        if i < merged:
            gitlab.advance_clock(1)
            gitlab.merge(mr)
            bodies.append(json.dumps(gitlab.mr_hook(mr, "merge")).encode())
    # Every event at least once, then fresh deliveries and resends.
    sends = [(body, str(uuid.uuid4())) for body in bodies]
    while len(sends) < count:
        if rng.random() < 1 / 3:
            sends.append(rng.choice(sends))
        else:
            sends.append((rng.choice(bodies), str(uuid.uuid4())))
    rng.shuffle(sends)
    return sends


def test_a_flood_with_a_kill_loses_nothing_and_doubles_nothing(
    docker_host: str, tmp_path: Path
) -> None:
    inst = Installation(docker_host, tmp_path)
    try:
        gitlab = inst.gitlab
        mrs = [
            gitlab.open_mr(inst.project, f"m{n}", {f"m{n}.txt": "0\n"}, author=inst.dev)
            for n in range(20)
        ]
        merged = 4
        sends = _flood_plan(gitlab, mrs, merged, FLOOD)
        headers = {
            "Content-Type": "application/json",
            "X-Gitlab-Event": "Merge Request Hook",
            "X-Gitlab-Token": harness.WEBHOOK_SECRET,
        }
        local = threading.local()
        acknowledged: list[str] = []
        lock = threading.Lock()
        half = threading.Event()
        resent = Counter[str]()

        def send(body: bytes, key: str) -> None:
            if not hasattr(local, "http"):
                local.http = requests.Session()

            def attempt() -> bool:
                try:
                    r = local.http.post(
                        inst.hook_url,
                        data=body,
                        headers={**headers, "Idempotency-Key": key},
                        timeout=30,
                    )
                except requests.RequestException:
                    local.http = requests.Session()
                    resent["refused"] += 1
                    return False
                if not r.ok:
                    resent[str(r.status_code)] += 1
                return bool(r.ok)

            services.wait_for(attempt, timeout=90, what="an acknowledgement")
            with lock:
                acknowledged.append(key)
                if len(acknowledged) == len(sends) // 2:
                    half.set()

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(send, body, key) for body, key in sends]
            services.wait_for(half.is_set, timeout=120, what="half of the deliveries")
            killed_at = time.monotonic() - started
            inst.bot.restart()
            for future in futures:
                future.result()
        elapsed = time.monotonic() - started
        print(
            f"{len(sends)} deliveries acknowledged in {elapsed:.1f} s "
            f"({len(sends) / elapsed:.0f}/s, killed at {killed_at:.1f} s); "
            f"failed attempts re-sent: {dict(resent)}"
        )

        assert len(acknowledged) == len(sends)
        assert set(acknowledged) <= inst.recorded_keys()
        assert resent["refused"] > 0  # the kill really refused some
        for i, mr in enumerate(mrs):
            if i < merged:
                inst.wait(
                    lambda mr=mr: (
                        not inst.containers(mr) and "merged" in inst.comment(mr)
                    ),
                    f"!{mr['iid']} to be removed",
                )
            else:
                head = gitlab.mr(mr)["sha"][:8]
                inst.wait(
                    lambda mr=mr, head=head: inst.settled(mr, head),
                    f"!{mr['iid']} to run with one comment",
                )
        for i, mr in enumerate(mrs):
            assert len(inst.bot_notes(mr)) == 1
            assert len(inst.containers(mr)) == (0 if i < merged else 1)
    finally:
        inst.close()
