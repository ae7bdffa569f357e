"""The bot's image builds from the repository's Dockerfile, offline, and runs.

No registry is reachable here, so the build swaps the Dockerfile's public inputs,
by name, for what scripts/setup.sh prepared: a Debian root filesystem with
python3 and git as the base image, xterm.js from the npm install, and a
wheelhouse. ``--network=none`` proves nothing else is fetched. Cases:

- the image runs as uid 10001, not root, and ``rwbot --help`` works;
- the image's own command, gunicorn, answers ``/healthz`` as uid 10001 in a
  network namespace with nothing but loopback (shared with a GitLab double,
  which the app asks who it is at start), and after ``rwbot migrate`` into the
  image's default SQLite file ``/readyz`` too;
- /app holds only what the Dockerfile copies: no .git, .venv, tests or secrets.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

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

# The web process as the Helm chart runs it, with the Kubernetes runtime: that
# reads its configuration at start and only a reconciler talks to the cluster.
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


def test_gunicorn_serves_healthz_with_no_network(image, gitlab_netns, tmp_path):
    netns_pid, gitlab = gitlab_netns
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    kubeconfig.chmod(0o644)
    container = f"rwbot-image-test-{uuid.uuid4().hex[:12]}"

    services.podman(
        "run",
        "--detach",
        f"--name={container}",
        f"--network=ns:/proc/{netns_pid}/ns/net",
        f"--volume={kubeconfig}:/etc/rwbot/kubeconfig:ro",
        "--env=KUBECONFIG=/etc/rwbot/kubeconfig",
        "--env=RWBOT_RUNTIME=kubernetes",
        f"--env=RWBOT_GITLAB_URL={gitlab['url']}",
        "--env=RWBOT_PUBLIC_URL=http://127.0.0.1:8080",
        # Secrets by name only: podman takes their values from its environment.
        "--env=RWBOT_GITLAB_TOKEN",
        "--env=RWBOT_WEBHOOK_SECRET",
        image,
        env={
            "RWBOT_GITLAB_TOKEN": gitlab["token"],
            "RWBOT_WEBHOOK_SECRET": uuid.uuid4().hex,
        },
    )
    try:
        services.wait_for(
            lambda: answers(container, "/healthz"), timeout=60, what="/healthz"
        )
        status = services.podman("exec", container, "cat", "/proc/1/status").stdout
        uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uids.split()[1:] == [BOT_UID] * 4
        # The image's default SQLite file is writable by the bot's user.
        services.podman("exec", container, "rwbot", "migrate")
        services.wait_for(
            lambda: answers(container, "/readyz"), timeout=60, what="/readyz"
        )
        assert "ERROR" not in logs(container)
    finally:
        services.podman("rm", "--force", "--time=0", container, check=False)


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
