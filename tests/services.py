"""Real services the tests start for themselves: rootful Podman and PostgreSQL.

Both are started once per test session on private sockets and stopped at the end.
When a service cannot be had, :func:`missing` skips the tests that need it on a
developer machine but fails them when ``CI=true``: in CI a missing real component
is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
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


def require_podman() -> None:
    """Skip or fail (see :func:`missing`) unless rootful Podman can run here."""
    if shutil.which("podman") is None:
        missing("podman")
    if os.geteuid() != 0:
        missing("rootful podman (run the tests as root)")


def podman(
    *args: str, env: Mapping[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The podman CLI with the suite's containers.conf; ``env`` adds variables
    (a secret goes there and into ``-e NAME``, never into the arguments)."""
    done = subprocess.run(
        ["podman", *args],
        env={**podman_env(), **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"podman {args[0]} exited {done.returncode}: {done.stderr.strip()}"
        )
    return done


def import_image(rootfs_tar: Path, image: str) -> None:
    """Import a root filesystem built by scripts/setup.sh as ``image``, once."""
    if podman("image", "exists", image, check=False).returncode == 0:
        return
    if not rootfs_tar.exists():
        missing(f"{rootfs_tar} (run scripts/setup.sh)")
    podman("import", "-q", str(rootfs_tar), image)


class PodmanService:
    """``podman system service`` on a private socket, which a test may stop and
    start again: the socket path (:attr:`url`, a DOCKER_HOST) stays the same, so
    clients reconnect once it is back."""

    def __init__(self) -> None:
        require_podman()
        self._env = podman_env()
        import_image(ROOTFS_TAR, WORKSPACE_IMAGE)
        self._tmp = Path(tempfile.mkdtemp(prefix="rwbot-podman-"))
        self._sock = self._tmp / "podman.sock"
        self.url = f"unix://{self._sock}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PodmanService:
        import docker

        self._sock.unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            ["podman", "system", "service", "--time=0", self.url],
            env=self._env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: (
                self._sock.exists() and docker.DockerClient(base_url=self.url).ping()
            ),
            timeout=30,
            what="podman socket",
        )
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)


@contextmanager
def podman_service() -> Iterator[str]:
    """Run ``podman system service`` on a private socket; yield its DOCKER_HOST."""
    service = PodmanService()
    try:
        yield service.start().url
    finally:
        service.close()


def _pg_bin() -> Path | None:
    for version in ("17", "16", "15"):
        path = Path(f"/usr/lib/postgresql/{version}/bin")
        if (path / "postgres").exists():
            return path
    return None


class PostgresServer:
    """A PostgreSQL server a test may stop and start again.

    The data directory and the port stay the same across :meth:`stop` and
    :meth:`start`, so clients configured with :attr:`url` reconnect to the same
    databases once it is back, as after a real restart.
    """

    def __init__(self) -> None:
        bin_dir = _pg_bin()
        if bin_dir is None:
            missing("PostgreSQL server")
            raise AssertionError("unreachable")
        self._bin = bin_dir
        self._tmp = Path(tempfile.mkdtemp(prefix="rwbot-pg-"))
        self._data = self._tmp / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://rwbot@127.0.0.1:{self.port}/postgres"
        self._proc: subprocess.Popen[bytes] | None = None
        # initdb and postgres refuse to run as root; run them as postgres.
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self._tmp, "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [
                *self._as_user,
                str(self._bin / "initdb"),
                "-D",
                str(self._data),
                "-A",
                "trust",
                "-U",
                "rwbot",
                "--no-sync",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def start(self) -> PostgresServer:
        import psycopg

        self._proc = subprocess.Popen(
            [
                *self._as_user,
                str(self._bin / "postgres"),
                "-D",
                str(self._data),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self._tmp),
                "-c",
                "fsync=off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        dsn = f"host=127.0.0.1 port={self.port} user=rwbot dbname=postgres"
        wait_for(lambda: psycopg.connect(dsn).close() or True, what="postgres")
        return self

    def stop(self) -> None:
        """Fast shutdown: clients are disconnected, as in a real restart."""
        if self._proc is None:
            return
        # SIGINT is PostgreSQL's "fast" mode; SIGTERM ("smart") would wait for
        # every client, and a bot's pooled connections never go away. It goes to
        # postgres itself: runuser does not pass SIGINT on.
        pid = int((self._data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGINT)
        self._proc.wait(timeout=30)
        self._proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a throwaway PostgreSQL on 127.0.0.1; yield an SQLAlchemy URL."""
    server = PostgresServer()
    try:
        yield server.start().url
    finally:
        server.close()


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
