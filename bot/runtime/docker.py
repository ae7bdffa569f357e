"""Workspaces as containers on one host, through the Docker Engine API.

Works with Docker and with Podman's Docker-compatible API service; the endpoint
comes from the standard ``DOCKER_HOST``. Each workspace is one container named
after its merge request, plus a named volume that holds the checkout.

The checkout is fetched by the bot (see :mod:`bot.git`) and copied in with
``put_archive`` before the container starts, so the clone credential never
enters the workspace and the workspace needs no route to GitLab. The last step of
preparing a workspace writes a marker file; a container without it was
interrupted half-way (the bot was killed) and is rebuilt rather than trusted.

Containers run with every capability dropped except the few that creating
users needs, ``no-new-privileges``, an init process as PID 1, and CPU, memory
and process limits.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import select
import socket
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests

from bot import accounts, devfile, git
from bot.errors import PermanentError, TemporaryError
from bot.runtime import workspace
from bot.runtime.base import (
    ENDPOINTS,
    LABEL_GENERATION,
    LABEL_INSTANCE,
    LABEL_MR,
    LABEL_PROJECT,
    MANAGED_BY,
    MANAGED_BY_VALUE,
    EndpointTarget,
    ExecResult,
    Listed,
    Phase,
    Runtime,
    Source,
    Spec,
    Status,
    Terminal,
    WorkspaceKey,
)

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

#: What ``useradd``/``adduser``, ``chown`` of homes and dropping to a user need;
#: KILL lets the tool end a locked user's processes.
CAPABILITIES = ["SETUID", "SETGID", "CHOWN", "FOWNER", "DAC_OVERRIDE", "KILL"]
TOOL_DIR = "/opt/rwbot"
READY_MARKER = f"{TOOL_DIR}/.ready"
#: Written before postStart commands run; READY_MARKER follows them.
INIT_MARKER = f"{TOOL_DIR}/.initialized"


def tool_script() -> bytes:
    """The in-workspace tool, shipped inside the bot's package."""
    return (resources.files("bot") / "workspace" / "rwctl.sh").read_bytes()


def _translated(what: str) -> Callable[[F], F]:
    """Turn docker SDK and connection errors into the bot's error classes."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (PermanentError, TemporaryError):
                raise
            except docker.errors.ImageNotFound as err:
                raise PermanentError(f"could not {what}: image not found") from err
            except docker.errors.APIError as err:
                message = f"could not {what}: {err.explanation or err}"
                if err.status_code is not None and err.status_code < 500:
                    raise PermanentError(message) from err
                raise TemporaryError(message) from err
            except (
                requests.RequestException,
                docker.errors.DockerException,
                ConnectionError,
            ) as err:
                raise TemporaryError(f"could not {what}: runtime unreachable") from err

        return wrapper  # type: ignore[return-value]

    return decorate


class DockerRuntime(Runtime):
    def __init__(self, client: docker.DockerClient, instance: str) -> None:
        self._client = client
        self._instance = instance

    @classmethod
    def from_env(cls, instance: str) -> DockerRuntime:
        try:
            return cls(docker.from_env(timeout=60), instance)
        except docker.errors.DockerException as err:
            raise TemporaryError(f"container runtime unreachable: {err}") from err

    # -- naming ---------------------------------------------------------------

    def _name(self, key: WorkspaceKey) -> str:
        return f"rwbot-{self._instance}-{key.slug()}"

    def _labels(self, key: WorkspaceKey, generation: int) -> dict[str, str]:
        return {
            MANAGED_BY: MANAGED_BY_VALUE,
            LABEL_INSTANCE: self._instance,
            LABEL_PROJECT: str(key.project_id),
            LABEL_MR: str(key.mr_iid),
            LABEL_GENERATION: str(generation),
        }

    def _ours(self, key: WorkspaceKey | None = None) -> list[str]:
        labels = [
            f"{MANAGED_BY}={MANAGED_BY_VALUE}",
            f"{LABEL_INSTANCE}={self._instance}",
        ]
        if key is not None:
            labels += [f"{LABEL_PROJECT}={key.project_id}", f"{LABEL_MR}={key.mr_iid}"]
        return labels

    def _container(self, key: WorkspaceKey) -> Any | None:
        try:
            return self._client.containers.get(self._name(key))
        except docker.errors.NotFound:
            return None

    # -- lifecycle ------------------------------------------------------------

    @_translated("start the workspace")
    def ensure_running(self, spec: Spec) -> Status:
        container = self._container(spec.key)
        if container is not None:
            generation = int(container.labels.get(LABEL_GENERATION, "0"))
            if generation != spec.generation:
                log.info(
                    "replacing workspace of an older generation",
                    extra={"workspace": spec.key.slug()},
                )
                self.remove(spec.key)
                container = None
        if container is not None:
            if container.status != "running":
                container.start()
            if self._prepared(container):
                return Status(Phase.RUNNING, generation=spec.generation)
            log.warning(
                "rebuilding a half-prepared workspace",
                extra={"workspace": spec.key.slug()},
            )
            self.remove(spec.key)
        notes = self._create(spec)
        return Status(Phase.RUNNING, generation=spec.generation, notes=notes)

    def _prepared(self, container: Any) -> bool:
        return _has_file(container, READY_MARKER)

    def _create(self, spec: Spec) -> tuple[str, ...]:
        """Fetch, read the devfile, create, copy in, start, prepare; return
        notes for the MR comment (what of the devfile was not applied, and
        how its postStart commands went)."""
        with tempfile.TemporaryDirectory(prefix="rwbot-clone-") as tmp:
            checkout = Path(tmp) / "checkout"
            git.fetch_checkout(
                spec.source.url,
                spec.source.ref,
                spec.source.sha,
                spec.source.token,
                checkout,
            )
            # Read from the commit being run (an approved fork commit, never
            # the fork's newer head).
            plan = workspace.devfile_plan(checkout, spec.devfile)
            container = self._new_container(spec, plan)
            container.put_archive(
                spec.checkout_root, _tar_dir(checkout, spec.source.path)
            )
        container.put_archive("/opt", _tar_tool())
        container.start()
        # The container's own command ran `rwctl init` and wrote the marker;
        # waiting for the file costs no exec (~100 ms each on Podman).
        marker = READY_MARKER if plan is None or not plan.post_start else INIT_MARKER
        self._wait_until_prepared(container, marker, spec.start_timeout)
        notes = list(workspace.notes(plan))
        if plan is not None and plan.post_start:
            notes += self._post_start(container, spec, plan)
            self._must(container, ["touch", READY_MARKER])
        return tuple(notes)

    def _wait_until_prepared(self, container: Any, marker: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while not _has_file(container, marker):
            container.reload()
            if container.status not in ("running", "created"):
                logs = container.logs(tail=20).decode(errors="replace").strip()
                raise PermanentError(f"preparing the workspace failed: {logs[-500:]}")
            if time.monotonic() > deadline:
                raise PermanentError("the workspace did not get ready in time")
            time.sleep(delay)
            delay = min(0.2, delay * 2)

    def _new_container(self, spec: Spec, plan: devfile.Plan | None) -> Any:
        labels = self._labels(spec.key, spec.generation)
        image = plan.image if plan is not None else spec.image
        try:
            self._client.images.get(image)
        except docker.errors.ImageNotFound:
            raise PermanentError(
                f"the workspace image {image} is not available"
            ) from None
        volume = self._client.volumes.create(
            name=f"{self._name(spec.key)}-g{spec.generation}", labels=labels
        )
        mounts = {volume.name: {"bind": spec.checkout_root, "mode": "rw"}}
        tmpfs: dict[str, str] = {}
        memory: int | str = spec.memory
        cpus = spec.cpus
        environment: dict[str, str] = {}
        if plan is not None:
            environment = dict(plan.env)
            memory = workspace.memory_bytes(plan) or memory
            cpus = workspace.cpus(plan) or cpus
            for v in plan.volumes:
                if v.ephemeral:
                    tmpfs[v.path] = ""
                    continue
                extra = self._client.volumes.create(
                    name=f"{self._name(spec.key)}-g{spec.generation}-{v.name}",
                    labels=labels,
                )
                mounts[extra.name] = {"bind": v.path, "mode": "rw"}
        marker = READY_MARKER if plan is None or not plan.post_start else INIT_MARKER
        return self._client.containers.create(
            image,
            # Prepare, mark, then idle: every start (also after a stop) runs
            # the idempotent `rwctl init` again. Arguments, never a string;
            # the environment is the devfile's alone, as reviewers see it.
            [
                "sh",
                "-c",
                'umask 022; m=$1; shift; "$@" && touch "$m" && exec sleep infinity',
                "rwbot-start",
                marker,
                *accounts.init_argv(spec.checkout_dir),
            ],
            name=self._name(spec.key),
            hostname=f"ws-{spec.key.slug()}",
            labels={**labels, ENDPOINTS: workspace.endpoint_record(plan)},
            environment=environment,
            init=True,
            mem_limit=memory,
            nano_cpus=int(cpus * 1e9),
            pids_limit=spec.pids,
            cap_drop=["ALL"],
            cap_add=CAPABILITIES,
            security_opt=["no-new-privileges"],
            network_mode=spec.network,
            volumes=mounts,
            tmpfs=tmpfs,
            detach=True,
        )

    def _post_start(self, container: Any, spec: Spec, plan: devfile.Plan) -> list[str]:
        """Run the devfile's postStart commands in order, output to a log in
        the workspace; a failing one is reported, and the rest still run."""
        notes = []
        for command in plan.post_start:
            argv = workspace.post_start_argv(
                command.command_line, command.working_dir or spec.checkout_dir
            )
            code, output = container.exec_run(argv, user="root")
            note = workspace.post_start_note(command.id, code, output or b"")
            if note is not None:
                notes.append(note)
        if plan.post_start:
            notes.append(workspace.post_start_summary(len(plan.post_start)))
        return notes

    def _must(self, container: Any, argv: list[str]) -> None:
        code, output = container.exec_run(argv, user="root")
        if code != 0:
            text = output.decode(errors="replace").strip()[-500:]
            raise PermanentError(f"preparing the workspace failed: {text}")

    @_translated("inspect the workspace")
    def status(self, key: WorkspaceKey) -> Status:
        container = self._container(key)
        if container is None:
            return Status(Phase.MISSING)
        generation = int(container.labels.get(LABEL_GENERATION, "0"))
        state = container.attrs.get("State", {})
        if container.status == "running":
            return Status(Phase.RUNNING, generation=generation)
        if container.status in ("created", "configured"):
            return Status(Phase.STARTING, generation=generation)
        reason = f"the container exited with code {state.get('ExitCode')}"
        if state.get("OOMKilled"):
            reason = "the container ran out of memory"
        if state.get("Error"):
            reason = f"the container failed: {state['Error']}"
        return Status(Phase.STOPPED, reason=reason, generation=generation)

    @_translated("stop the workspace")
    def stop(self, key: WorkspaceKey) -> None:
        container = self._container(key)
        if container is not None and container.status == "running":
            container.stop(timeout=10)

    @_translated("remove the workspace")
    def remove(self, key: WorkspaceKey) -> None:
        for container in self._client.containers.list(
            all=True, filters={"label": self._ours(key)}
        ):
            _ignore_missing(lambda c=container: c.remove(force=True, v=True))
        for volume in self._volumes(key):
            self._remove_volume(volume)

    def _remove_volume(self, volume: Any) -> None:
        # Podman may still be tearing the container down when its removal call
        # returns; the volume is then "in use" for a moment.
        deadline = time.monotonic() + 30
        delay = 0.05
        while True:
            try:
                volume.remove(force=True)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as err:
                if err.status_code != 409 or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(1.0, delay * 2)

    def list_ours(self) -> Iterator[Listed]:
        seen = set()
        for obj in self._labelled_objects():
            labels = obj.attrs.get("Labels") or getattr(obj, "labels", {}) or {}
            try:
                key = WorkspaceKey(int(labels[LABEL_PROJECT]), int(labels[LABEL_MR]))
                generation = int(labels.get(LABEL_GENERATION, "0"))
            except (KeyError, ValueError):
                continue
            if (key, generation) not in seen:
                seen.add((key, generation))
                yield Listed(key, generation, obj.name)

    @_translated("list workspaces")
    def _labelled_objects(self) -> list[Any]:
        """Containers and volumes (a volume may outlive its container)."""
        containers = self._client.containers.list(
            all=True, filters={"label": self._ours()}
        )
        return [*containers, *self._volumes()]

    def _volumes(self, key: WorkspaceKey | None = None) -> list[Any]:
        """Our volumes. Podman 4's compatible API ORs several label filters on
        volumes (it ANDs them on containers), so every label is checked here."""
        wanted = dict(label.split("=", 1) for label in self._ours(key))
        return [
            volume
            for volume in self._client.volumes.list(filters={"label": self._ours(key)})
            if wanted.items() <= (volume.attrs.get("Labels") or {}).items()
        ]

    @_translated("run a command in the workspace")
    def exec(
        self, key: WorkspaceKey, argv: Sequence[str], *, user: str = "root"
    ) -> ExecResult:
        container = self._container(key)
        if container is None or container.status != "running":
            raise PermanentError("the workspace is not running")
        code, output = container.exec_run(list(argv), user=user)
        return ExecResult(int(code), output or b"")

    @_translated("bring new commits into the workspace")
    def sync(self, key: WorkspaceKey, source: Source, checkout_dir: str) -> ExecResult:
        container = self._container(key)
        if container is None or container.status != "running":
            raise PermanentError("the workspace is not running")
        code, head = container.exec_run(
            ["git", "-C", checkout_dir, "rev-parse", "HEAD"]
        )
        since = head.decode().strip() if code == 0 else source.sha
        with tempfile.TemporaryDirectory(prefix="rwbot-sync-") as tmp:
            path = Path(tmp) / "sync.bundle"
            git.bundle(source.url, source.ref, source.sha, since, source.token, path)
            # Under the tool's root-owned folder, not /tmp, where a user could
            # have planted a link of the same name.
            container.put_archive(TOOL_DIR, _tar_file("sync.bundle", path.read_bytes()))
        # Fast-forward only: git refuses, and changes nothing, when local
        # changes or local commits would be affected.
        script = (
            'umask 002; cd "$1" || exit 1; '
            'git fetch -q "$2" "+refs/heads/mr-head:refs/remotes/origin/mr-head" '
            '&& git merge --ff-only -q "$3"; rc=$?; rm -f "$2"; exit $rc'
        )
        code, output = container.exec_run(
            [
                "sh",
                "-c",
                script,
                "sync",
                checkout_dir,
                f"{TOOL_DIR}/sync.bundle",
                source.sha,
            ]
        )
        return ExecResult(int(code), output or b"")

    @_translated("open a terminal")
    def open_terminal(
        self, key: WorkspaceKey, argv: Sequence[str], *, rows: int, cols: int
    ) -> Terminal:
        container = self._container(key)
        if container is None or container.status != "running":
            raise PermanentError("the workspace is not running")
        api = self._client.api
        created = api.exec_create(
            container.id,
            list(argv),
            tty=True,
            stdin=True,
            environment={"TERM": "xterm-256color"},
        )
        sock = api.exec_start(created["Id"], tty=True, socket=True)
        terminal = DockerTerminal(api, created["Id"], _raw_socket(sock))
        terminal.resize(rows, cols)
        return terminal

    @_translated("find the workspace's endpoint")
    def endpoint(self, key: WorkspaceKey, name: str) -> EndpointTarget:
        """The container's address on its network: the bot must be able to
        reach that network (on the host, or attached to the same network)."""
        container = self._container(key)
        if container is None or container.status != "running":
            raise PermanentError("The workspace is not running.")
        port, path = workspace.endpoint_in(container.labels.get(ENDPOINTS), name)
        networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
        address = next(
            (n["IPAddress"] for n in networks.values() if n.get("IPAddress")), None
        )
        if address is None:
            raise PermanentError(
                "The workspace has no network address the bot can reach "
                "(RWBOT_WORKSPACE_NETWORK)."
            )
        return EndpointTarget(address, port, path)

    @_translated("reach the container runtime")
    def ping(self) -> None:
        self._client.ping()


class DockerTerminal(Terminal):
    """A TTY exec attached through the API's hijacked HTTP connection."""

    def __init__(self, api: Any, exec_id: str, sock: socket.socket) -> None:
        self._api = api
        self._exec_id = exec_id
        self._sock = sock
        #: A size the runtime refused because the TTY did not exist yet.
        self._pending: tuple[int, int] | None = None

    def read(self, timeout: float | None = None) -> bytes:
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if not ready:
            raise TimeoutError("no terminal output")
        try:
            data = self._sock.recv(65536)
        except OSError:
            return b""
        if data and self._pending is not None:
            # Output means the process and its TTY exist now.
            rows, cols = self._pending
            self._pending = None
            self.resize(rows, cols)
        return data

    def write(self, data: bytes) -> None:
        self._sock.sendall(data)

    def resize(self, rows: int, cols: int) -> None:
        try:
            self._api.exec_resize(self._exec_id, height=rows, width=cols)
        except docker.errors.APIError as err:
            # The exec may not have started its TTY yet: try again once it
            # has said something.
            self._pending = (rows, cols)
            log.debug("terminal resize refused", extra={"error": str(err)})

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def _raw_socket(sock: Any) -> socket.socket:
    # docker-py hands back a SocketIO around the real socket for unix endpoints.
    raw = getattr(sock, "_sock", sock)
    assert isinstance(raw, socket.socket)
    return raw


def _tar_dir(directory: Path, arcname: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(directory, arcname=arcname, filter=_as_root)
    return buf.getvalue()


def _has_file(container: Any, path: str) -> bool:
    try:
        stream, _ = container.get_archive(path)
    except docker.errors.NotFound:
        return False
    for _chunk in stream:  # drain the response so the connection is reused
        pass
    return True


def _tar_file(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _tar_tool() -> bytes:
    buf = io.BytesIO()
    data = tool_script()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        folder = tarfile.TarInfo("rwbot")
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        tar.addfile(folder)
        info = tarfile.TarInfo("rwbot/rwctl")
        info.size = len(data)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _ignore_missing(fn: Any) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        fn()
