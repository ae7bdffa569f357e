"""``scripts/demo.py``, the README's first command, run the way a person runs it.

Cases: ``demo.py --exit`` prints the bot's comment saying the workspace is ready
with a join link, then the comment saying it is behind after a push, exits 0,
and leaves no container or volume of its instance behind.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid

import docker

from tests import services

DEMO = services.ROOT / "scripts" / "demo.py"


def comments_in(output: str) -> list[str]:
    return re.findall(
        r"^--- the bot's comment on !\d+ ---\n(.*?)^--- end of comment ---$",
        output,
        flags=re.MULTILINE | re.DOTALL,
    )


def test_the_demo_shows_a_ready_comment_with_a_join_link_and_cleans_up(
    docker_host: str,
) -> None:
    port, gitlab_port = services.free_port(), services.free_port()
    instance = f"demo-{uuid.uuid4().hex[:8]}"

    done = subprocess.run(
        [
            sys.executable,
            str(DEMO),
            "--exit",
            f"--port={port}",
            f"--gitlab-port={gitlab_port}",
            f"--instance={instance}",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    ready, behind = comments_in(done.stdout)
    link = f"http://127.0.0.1:{port}/w/"
    assert "ready" in ready and f"]({link}" in ready
    assert "Behind" in behind
    assert f"Join link: {link}" in done.stdout
    assert f"http://127.0.0.1:{gitlab_port}" in done.stdout
    client = docker.DockerClient(base_url=docker_host)
    ours = {"label": [f"rwbot.instance={instance}"]}
    assert client.containers.list(all=True, filters=ours) == []
    assert client.volumes.list(filters=ours) == []
