"""The bot killed with SIGKILL and restarted: nothing is lost, nothing is doubled.

The bot runs as a real ``rwbot serve`` process (the reconciler inside it) against
the GitLab double and real Podman, and is SIGKILLed and started again.

Cases: the whole flow (open, push, merge) with the bot killed between every step
and right after each delivery is acknowledged (and once more while a workspace
is half built) converges after every restart to one container and one comment
that says what test_flow expects; a burst of 50 deliveries for 10 merge requests,
some of them resends of the same delivery, with the bot killed mid-burst and the
failed deliveries retried as GitLab retries them, records every acknowledged
delivery and ends with one container and one comment per merge request.
"""

from __future__ import annotations

import functools
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
import sqlalchemy as sa

from bot import comments
from bot.store import Delivery, Store
from tests import harness, services
from tests.gitlab_double import DEVELOPER, GitLabDouble

#: Short enough that a claim held by a killed bot runs out within a test.
CLAIM_LEASE = 10.0
#: A restarted bot may first wait for its predecessor's claims to run out.
CONVERGE_TIMEOUT = CLAIM_LEASE + 60


class Installation:
    """The GitLab double, Podman, and a bot process the test kills at will."""

    def __init__(self, docker_host: str, tmp_path: Path) -> None:
        self.gitlab = GitLabDouble().start()
        public_url = f"http://127.0.0.1:{services.free_port()}"
        self.settings = harness.bot_settings(
            self.gitlab,
            public_url,
            f"sqlite:///{tmp_path}/bot.db",
            claim_lease=CLAIM_LEASE,
        )
        self.hook_url = f"{public_url}/webhooks/gitlab"
        self.docker = docker.DockerClient(base_url=docker_host)
        self.bot = harness.BotProcess(self.settings, docker_host, tmp_path / "bot.log")
        self.bot.start()
        self.store = Store(self.settings.database_url)

    def close(self) -> None:
        self.bot.stop()
        for container in self.docker.containers.list(all=True, filters=self._ours()):
            container.remove(force=True, v=True)
        for volume in self.docker.volumes.list(filters=self._ours()):
            volume.remove(force=True)
        self.store.dispose()
        self.gitlab.stop()

    # -- driving --------------------------------------------------------------

    def deliver(self, payload: dict[str, Any], key: str | None = None) -> str:
        """Deliver until the bot answers 2xx, as GitLab retries a failed hook;
        return the delivery's Idempotency-Key."""
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
                return False
            return answer.ok

        services.wait_for(attempt, timeout=60, what="the delivery to be acknowledged")
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

    def volumes(self, mr: dict[str, Any]) -> list[Any]:
        # Podman's compatible API ORs label filters on volumes: check them all.
        wanted = set(self._ours(mr)["label"])
        return [
            v
            for v in self.docker.volumes.list(filters=self._ours(mr))
            if wanted <= {f"{k}={val}" for k, val in (v.attrs["Labels"] or {}).items()}
        ]

    def read(self, mr: dict[str, Any], path: str) -> str:
        (container,) = self.containers(mr)
        code, out = container.exec_run(["cat", path])
        assert code == 0, out
        return str(out.decode())

    def recorded_keys(self) -> set[str]:
        with self.store.session() as s:
            return set(s.scalars(sa.select(Delivery.key)))

    # -- what converged means -------------------------------------------------

    def running_with_comment(self, mr: dict[str, Any], *words: str) -> bool:
        found = self.containers(mr)
        return (
            len(found) == 1
            and found[0].status == "running"
            and len(self.bot_notes(mr)) == 1
            and all(w in self.comment(mr) for w in words)
        )

    def assert_one_of_each(self, mr: dict[str, Any]) -> None:
        notes = self.bot_notes(mr)
        assert len(notes) == 1, f"{len(notes)} bot comments on !{mr['iid']}"
        assert len(self.containers(mr)) == 1


@pytest.fixture
def installation(docker_host: str, tmp_path: Path) -> Iterator[Installation]:
    inst = Installation(docker_host, tmp_path)
    yield inst
    inst.close()


@pytest.fixture
def project(installation: Installation) -> dict[str, Any]:
    gitlab = installation.gitlab
    p = gitlab.add_project("team/app", files={"README.md": "hello\n"})
    dev = gitlab.add_user("dana", name="Dana Dev")
    gitlab.set_member(p, dev, DEVELOPER)
    return p


def test_killed_between_and_during_every_step_the_flow_still_converges(
    installation: Installation, project: dict[str, Any]
) -> None:
    inst, gitlab = installation, installation.gitlab
    mr = gitlab.open_mr(project, "feature", {"app.py": "print('v1')\n"})
    first = gitlab.mr(mr)["sha"]
    checkout = "/workspace/team/app"

    # Opened: killed as soon as the delivery is acknowledged ...
    inst.deliver(gitlab.mr_hook(mr, "open"))
    inst.bot.restart()
    # ... and again while the workspace is being built, before its comment.
    inst.wait(lambda: inst.containers(mr), "the workspace container to be created")
    inst.bot.restart()
    inst.wait(
        lambda: inst.running_with_comment(mr, "ready", first[:8]),
        "the workspace to be ready",
    )
    assert inst.read(mr, f"{checkout}/app.py") == "print('v1')\n"
    inst.bot.restart()  # killed while idle: nothing is redone or posted again
    inst.wait(lambda: inst.running_with_comment(mr, "ready"), "a settled restart")
    inst.assert_one_of_each(mr)

    # Pushed: killed right after the update is acknowledged.
    new = gitlab.push(mr, {"app.py": "print('v2')\n"})
    inst.deliver(gitlab.mr_hook(mr, "update"))
    inst.bot.restart()
    inst.wait(
        lambda: inst.running_with_comment(mr, "Behind", new[:8], first[:8]),
        "the comment to say the workspace is behind",
    )
    assert inst.read(mr, f"{checkout}/app.py") == "print('v1')\n"
    inst.bot.restart()
    inst.wait(lambda: inst.running_with_comment(mr, "Behind"), "a settled restart")
    inst.assert_one_of_each(mr)

    # Merged: killed right after the merge is acknowledged.
    gitlab.merge(mr)
    inst.deliver(gitlab.mr_hook(mr, "merge"))
    inst.bot.restart()
    inst.wait(
        lambda: (
            not inst.containers(mr)
            and not inst.volumes(mr)
            and "merged" in inst.comment(mr)
        ),
        "the workspace to be removed",
    )
    inst.bot.restart()
    inst.wait(lambda: "removed" in inst.comment(mr), "a settled restart")
    body = inst.comment(mr)
    assert "removed" in body and "merged" in body and "/w/" not in body
    assert len(inst.bot_notes(mr)) == 1
    assert inst.containers(mr) == [] and inst.volumes(mr) == []


def test_a_burst_with_resends_and_a_kill_loses_nothing_and_doubles_nothing(
    installation: Installation, project: dict[str, Any]
) -> None:
    inst, gitlab = installation, installation.gitlab
    mrs = [
        gitlab.open_mr(project, f"feature-{n}", {f"f{n}.txt": f"{n}\n"})
        for n in range(10)
    ]
    # Per MR: three deliveries of the open event, two of them resent once more
    # with the same Idempotency-Key (GitLab's retry or "Resend request").
    sends: list[tuple[dict[str, Any], str]] = []
    for mr in mrs:
        payload = gitlab.mr_hook(mr, "open")
        keys = [str(uuid.uuid4()) for _ in range(3)]
        sends += [(payload, k) for k in [*keys, keys[0], keys[1]]]
    random.Random(7).shuffle(sends)
    assert len(sends) == 50

    acknowledged: list[str] = []
    lock = threading.Lock()
    killed = threading.Event()
    kill_after = 20

    def send(payload: dict[str, Any], key: str) -> None:
        inst.deliver(payload, key)
        with lock:
            acknowledged.append(key)
            if len(acknowledged) == kill_after:
                # Killed here, by the thread that saw the 20th answer, so the
                # other 30 deliveries are still to come or on the wire.
                inst.bot.kill()
                killed.set()

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(send, payload, key) for payload, key in sends]
        services.wait_for(killed.is_set, timeout=60, what="the kill mid-burst")
        inst.bot.start()
        for future in futures:
            future.result()

    assert len(acknowledged) == 50
    assert set(acknowledged) <= inst.recorded_keys()
    for mr in mrs:
        ready = functools.partial(inst.running_with_comment, mr, "ready")
        inst.wait(ready, f"!{mr['iid']} to be ready")
    for mr in mrs:
        inst.assert_one_of_each(mr)
