"""Real services the tests start for themselves: rootful Podman and PostgreSQL.

Both are started once per test session on private sockets and stopped at the end.
When a service cannot be had, :func:`missing` skips the tests that need it on a
developer machine but fails them when ``CI=true``: in CI a missing real component
is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTAINERS_CONF = ROOT / "scripts" / "containers.conf"
ROOTFS_TAR = ROOT / "build" / "rootfs.tar"
WORKSPACE_IMAGE = "localhost/rwbot-workspace:test"


def missing(what: str) -> None:
    """Skip locally, fail in CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required in CI but not available", pytrace=False)
    pytest.skip(f"{what} not available")


def wait_for(
    condition: Callable[[], object], timeout: float = 30.0, what: str = "condition"
) -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except Exception as err:
            last_error = err
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}") from last_error
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def podman_service() -> Iterator[str]:
    """Run ``podman system service`` on a private socket; yield its DOCKER_HOST."""
    if shutil.which("podman") is None:
        missing("podman")
    if os.geteuid() != 0:
        missing("rootful podman (run the tests as root)")
    env = podman_env()
    exists = subprocess.run(
        ["podman", "image", "exists", WORKSPACE_IMAGE], env=env, check=False
    )
    if exists.returncode != 0:
        if not ROOTFS_TAR.exists():
            missing(f"{ROOTFS_TAR} (run scripts/setup.sh)")
        subprocess.run(
            ["podman", "import", "-q", str(ROOTFS_TAR), WORKSPACE_IMAGE],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    tmp = Path(tempfile.mkdtemp(prefix="rwbot-podman-"))
    sock = tmp / "podman.sock"
    proc = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import docker

        url = f"unix://{sock}"
        wait_for(
            lambda: sock.exists() and docker.DockerClient(base_url=url).ping(),
            timeout=30,
            what="podman socket",
        )
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _pg_bin() -> Path | None:
    for version in ("17", "16", "15"):
        path = Path(f"/usr/lib/postgresql/{version}/bin")
        if (path / "postgres").exists():
            return path
    return None


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a throwaway PostgreSQL on 127.0.0.1; yield an SQLAlchemy URL."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        missing("PostgreSQL server")
        raise AssertionError("unreachable")
    tmp = Path(tempfile.mkdtemp(prefix="rwbot-pg-"))
    data = tmp / "data"
    port = free_port()
    # initdb and postgres refuse to run as root; run them as the postgres user.
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *as_user,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "rwbot",
            "--no-sync",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    proc = subprocess.Popen(
        [
            *as_user,
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "-k",
            str(tmp),
            "-c",
            "fsync=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import psycopg

        dsn = f"host=127.0.0.1 port={port} user=rwbot dbname=postgres"
        wait_for(lambda: psycopg.connect(dsn).close() or True, what="postgres")
        yield f"postgresql+psycopg://rwbot@127.0.0.1:{port}/postgres"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def create_database(server_url: str) -> str:
    """Create a new, empty database on the server; return its URL."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    host_part = server_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_part.split(":")
    dsn = f"host={host} port={port} user=rwbot dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"
