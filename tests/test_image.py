"""The bot's image builds from the repository's Dockerfile, offline, and runs.

No registry is reachable here, so the build swaps the Dockerfile's public inputs,
by name, for what scripts/setup.sh prepared: a Debian root filesystem with
python3 and git as the base image, xterm.js from the npm install, and a
wheelhouse. ``--network=none`` proves nothing else is fetched. Cases:

- the image runs as uid 10001, not root, and ``rwbot --help`` works;
- run as the Helm chart runs it (its user and group, a read-only root with only
  its emptyDir volumes writable, no capabilities, its environment, secrets as
  files and the SQLite volume): the image's own command, gunicorn tuned by the
  chart's GUNICORN_CMD_ARGS, answers ``/healthz`` as uid 10001 with no ERROR
  logged, in a network namespace with nothing but loopback (shared with a
  GitLab double, which the app asks who it is at start), and after
  ``rwbot migrate`` ``/readyz`` too;
- ``rwbot worker`` run the same way migrates the SQLite file on the volume to
  the newest schema and logs that it started (a cluster it cannot reach only
  pauses the reconciler); with no GitLab it exits 1 with one line saying so;
- /app holds only what the Dockerfile copies: no .git, .venv, tests or secrets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from bot.store import Store
from tests import services

pytestmark = pytest.mark.podman

PYTHON_ROOTFS_TAR = services.ROOT / "build" / "python-rootfs.tar"
PYTHON_IMAGE = "localhost/rwbot-python:test"
WHEELS = services.ROOT / "build" / "wheels"
NODE_MODULES = services.ROOT / "node_modules"
BOT_UID = "10001"

#: What the Dockerfile copies into /app, and the metadata pip writes there.
APP_ENTRIES = {
    "README.md",
    "bot",
    "node_modules",
    "pyproject.toml",
    "review_workspace_bot.egg-info",
    "templates",
}
#: Names that must appear nowhere in /app.
NOT_SHIPPED = (".git", ".venv", "tests", "build", ".env*", "*.pem", "*.key", "*.db")

CHART = services.ROOT / "helm" / "review-workspace-bot"
#: The least an install gives: the two secrets the bot cannot start without.
CHART_VALUES = {
    "secrets": {
        "gitlabToken": {"value": "set-below"},
        "webhookSecret": {"value": "set-below"},
    }
}
SECRETS_MOUNT = "/run/secrets/rwbot/"

# The chart's pods find the cluster through their service account; here a
# kubeconfig names an API server nobody listens on: the web process reads its
# configuration at start and only a reconciler talks to the cluster.
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: bot, user: {token: unused}}]
contexts: [{name: none, context: {cluster: none, user: bot}}]
current-context: none
"""

PROBE = (
    "import sys, urllib.request;"
    "answer = urllib.request.urlopen('http://127.0.0.1:8080' + sys.argv[1], timeout=2);"
    "sys.exit(answer.status != 200)"
)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The bot's image, built without a network from the repository's Dockerfile."""
    services.require_podman()
    if not (WHEELS / ".complete").exists():
        services.missing(f"the wheelhouse {WHEELS} (run scripts/setup.sh)")
    if not (NODE_MODULES / "@xterm").is_dir():
        services.missing(f"xterm.js in {NODE_MODULES} (run scripts/setup.sh)")
    services.import_image(PYTHON_ROOTFS_TAR, PYTHON_IMAGE)

    tag = f"localhost/rwbot-image-test:{uuid.uuid4().hex[:12]}"
    try:
        services.podman(
            "build",
            "--network=none",
            "--pull=never",
            # One layer and no intermediate images or containers to clean up.
            "--layers=false",
            "--force-rm",
            f"--build-arg=PYTHON_IMAGE={PYTHON_IMAGE}",
            f"--build-context=assets={NODE_MODULES}",
            f"--build-context=wheels={WHEELS}",
            "--build-arg=PIP_OPTIONS=--no-index",
            f"--tag={tag}",
            str(services.ROOT),
        )
        yield tag
    finally:
        services.podman("rmi", tag, check=False)


@dataclass(frozen=True)
class ChartPod:
    """The pod the chart renders with ``CHART_VALUES`` (SQLite: web and worker
    are two containers of it) and the ConfigMap its containers read."""

    pod: dict[str, Any]
    config: dict[str, str]

    def container(self, name: str) -> dict[str, Any]:
        return next(c for c in self.pod["containers"] if c["name"] == name)


@pytest.fixture(scope="module")
def chart_pod() -> ChartPod:
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(
            CHART_VALUES, name="rwbot", namespace="bots", is_install=True
        )
    objects = [
        doc
        for path, text in rendered.items()
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    return ChartPod(deployment["spec"]["template"]["spec"], config)


@dataclass(frozen=True)
class Run:
    """``podman run`` options for one of the chart's containers, and the
    environment that carries what must not appear in them."""

    options: list[str]
    command: list[str]


def as_the_chart(
    chart: ChartPod,
    name: str,
    tmp_path: Path,
    gitlab: dict[str, Any],
    network: str,
) -> Run:
    """Give the container what the chart's pod gives it: user and groups, a
    read-only root where only emptyDir volumes are writable, no capabilities
    and no privilege escalation, the ConfigMap and literal variables, the
    secrets as files (mode 0440, group fsGroup) and the SQLite volume (owned
    by fsGroup, as the kubelet makes it). GitLab's URL is the double's."""
    container = chart.container(name)
    pod_security = chart.pod["securityContext"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["allowPrivilegeEscalation"] is False
    uid, gid, fs_group = (
        pod_security["runAsUser"],
        pod_security["runAsGroup"],
        pod_security["fsGroup"],
    )

    data = tmp_path / "data"
    secrets = tmp_path / "secrets"
    for directory in (data, secrets):
        directory.mkdir(exist_ok=True)
    os.chown(data, uid, fs_group)
    os.chown(secrets, 0, fs_group)
    secrets.chmod(0o750)
    values = {
        "gitlab-token": gitlab["token"],
        "webhook-secret": uuid.uuid4().hex,
        "session-secret": uuid.uuid4().hex,
    }
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    kubeconfig.chmod(0o644)

    env = {
        **chart.config,
        "RWBOT_GITLAB_URL": gitlab["url"],
        "KUBECONFIG": "/etc/rwbot/kubeconfig",
    }
    for item in container["env"]:
        value = item["value"]  # SQLite: no variable comes from a Secret
        if value.startswith(SECRETS_MOUNT):
            path = secrets / value.removeprefix(SECRETS_MOUNT)
            path.write_text(values[path.name])
            os.chown(path, 0, fs_group)
            path.chmod(0o440)
        env[item["name"]] = value

    options = [
        f"--user={uid}:{gid}",
        f"--group-add={fs_group}",
        "--read-only",
        "--read-only-tmpfs=false",  # podman's own writable /run, /var/tmp: none
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        f"--network={network}",
        f"--volume={kubeconfig}:/etc/rwbot/kubeconfig:ro",
        *(f"--env={key}={value}" for key, value in env.items()),
    ]
    volumes = {v["name"]: v for v in chart.pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            options.append(f"--tmpfs={mount['mountPath']}")
        elif "persistentVolumeClaim" in volume:
            options.append(f"--volume={data}:{mount['mountPath']}")
        elif "projected" in volume:
            options.append(f"--volume={secrets}:{mount['mountPath']}:ro")
        else:
            pytest.fail(f"no stand-in for the chart's volume {volume}")
    return Run(options, list(container.get("command", [])))


@pytest.fixture
def gitlab_netns() -> Iterator[tuple[int, dict[str, Any]]]:
    """A GitLab double alone in a new network namespace that has only loopback.

    Yields the double's pid (``/proc/<pid>/ns/net`` is the namespace) and the
    ``url`` and ``token`` it printed.
    """
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            services.missing(tool)
    proc = subprocess.Popen(
        [
            "unshare",
            "--net",
            "--",
            "sh",
            "-c",
            'ip link set lo up && exec "$0" -m tests.gitlab_double',
            sys.executable,
        ],
        cwd=services.ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first_line = proc.stdout.readline()
        if not first_line:
            pytest.fail("the GitLab double exited before it served", pytrace=False)
        yield proc.pid, json.loads(first_line)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def logs(container: str) -> str:
    done = services.podman("logs", container, check=False)
    return done.stdout + done.stderr


def answers(container: str, path: str) -> bool:
    state = services.podman(
        "inspect", "--format={{.State.Running}}", container
    ).stdout.strip()
    if state != "true":
        pytest.fail(f"the bot's container stopped:\n{logs(container)}", pytrace=False)

    answer = services.podman(
        "exec", container, "python3", "-c", PROBE, path, check=False
    )
    return answer.returncode == 0


def test_image_runs_as_uid_10001_and_rwbot_works(image):
    user = services.podman("image", "inspect", "--format={{.Config.User}}", image)
    assert user.stdout.strip() == BOT_UID

    out = services.podman(
        "run", "--rm", "--network=none", image, "sh", "-c", "id -u && rwbot --help"
    ).stdout
    uid, usage = out.split("\n", 1)
    assert uid == BOT_UID
    assert usage.startswith("usage: rwbot")


def test_gunicorn_serves_healthz_as_the_chart_runs_it(
    image, chart_pod, gitlab_netns, tmp_path
):
    netns_pid, gitlab = gitlab_netns
    run = as_the_chart(
        chart_pod, "web", tmp_path, gitlab, f"ns:/proc/{netns_pid}/ns/net"
    )
    container = f"rwbot-image-test-{uuid.uuid4().hex[:12]}"

    assert run.command == []  # the image's own command
    services.podman(
        "run", "--detach", f"--name={container}", *run.options, image, *run.command
    )
    try:
        services.wait_for(
            lambda: answers(container, "/healthz"), timeout=60, what="/healthz"
        )
        status = services.podman("exec", container, "cat", "/proc/1/status").stdout
        uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uids.split()[1:] == [BOT_UID] * 4
        # The worker container migrates in the chart's pod; here by hand.
        services.podman("exec", container, "rwbot", "migrate")
        services.wait_for(
            lambda: answers(container, "/readyz"), timeout=60, what="/readyz"
        )
        output = logs(container)
        assert "ERROR" not in output
        # The chart's GUNICORN_CMD_ARGS reached gunicorn: two workers, its port.
        assert "Listening at: http://0.0.0.0:8080" in output
        assert output.count("Booting worker with pid") == 2
        assert "Using worker: gthread" in output
    finally:
        services.podman("rm", "--force", "--time=0", container, check=False)


def test_worker_migrates_the_volume_and_starts_as_the_chart_runs_it(
    image, chart_pod, gitlab_netns, tmp_path
):
    netns_pid, gitlab = gitlab_netns
    run = as_the_chart(
        chart_pod, "worker", tmp_path, gitlab, f"ns:/proc/{netns_pid}/ns/net"
    )
    container = f"rwbot-image-test-{uuid.uuid4().hex[:12]}"

    assert run.command == ["rwbot", "worker"]
    services.podman(
        "run", "--detach", f"--name={container}", *run.options, image, *run.command
    )
    try:
        services.wait_for(
            lambda: '"message": "worker started"' in logs(container),
            timeout=60,
            what="the worker's start",
        )
        # No cluster answers: the reconciler pauses, the worker stays up.
        services.wait_for(
            lambda: "reconciler paused" in logs(container),
            timeout=60,
            what="the reconciler's first pass",
        )
        running = services.podman(
            "inspect", "--format={{.State.Running}}", container
        ).stdout.strip()
        assert running == "true"
        assert "Traceback" not in logs(container)
    finally:
        services.podman("rm", "--force", "--time=0", container, check=False)

    database = tmp_path / "data" / "rwbot.db"
    assert str(database.stat().st_uid) == BOT_UID
    Store(f"sqlite:///{database}").ping()  # raises unless at the newest revision


def test_worker_without_gitlab_exits_with_one_line(image, chart_pod, tmp_path):
    # Nothing listens on 127.0.0.1:9 in a network namespace of its own.
    gitlab = {"url": "http://127.0.0.1:9", "token": uuid.uuid4().hex}
    run = as_the_chart(chart_pod, "worker", tmp_path, gitlab, "none")

    done = services.podman(
        "run", "--rm", *run.options, image, *run.command, check=False
    )

    assert done.returncode == 1
    assert (
        done.stderr.splitlines()[-1] == "rwbot: GitLab unreachable (read its own user)"
    )
    assert "Traceback" not in done.stdout + done.stderr


def test_image_holds_only_what_the_dockerfile_copies(image):
    app = services.podman("run", "--rm", "--network=none", image, "ls", "-A", "/app")
    assert set(app.stdout.split()) == APP_ENTRIES

    # node_modules holds npm packages as published; their files are not ours.
    names = [arg for name in NOT_SHIPPED for arg in ("-o", "-name", name)][1:]
    found = services.podman(
        *("run", "--rm", "--network=none", image),
        *("find", "/app", "-path", "/app/node_modules", "-prune", "-o"),
        *("(", *names, ")", "-print"),
    )
    assert found.stdout == ""
