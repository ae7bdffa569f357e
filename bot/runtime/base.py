"""The runtime interface: what the bot needs from whatever runs its workspaces.

The reconciler and the join flow only ever talk to a :class:`Runtime`. The Docker
implementation (``bot.runtime.docker``) serves single hosts with Docker or Podman;
other implementations (Kubernetes) plug in behind the same methods, so the rest of
the bot does not know which one it talks to.

A workspace is identified by its :class:`WorkspaceKey` (project id + MR iid) and
carries labels saying it is ours, so that a resync can find every object the bot
owns even when the store was lost.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from bot.accounts import UidPolicy
from bot.errors import PermanentError
from bot.runtime.workspace import DevfilePolicy

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "review-workspace-bot"
LABEL_INSTANCE = "rwbot.instance"
LABEL_PROJECT = "rwbot.project-id"
LABEL_MR = "rwbot.mr-iid"
LABEL_GENERATION = "rwbot.generation"
#: The exposed devfile endpoints of a workspace, as JSON (see
#: :func:`bot.runtime.workspace.endpoint_record`): a label on Docker, an
#: annotation on Kubernetes.
ENDPOINTS = "rwbot.endpoints"


@dataclass(frozen=True, order=True)
class WorkspaceKey:
    project_id: int
    mr_iid: int

    def slug(self) -> str:
        return f"p{self.project_id}-mr{self.mr_iid}"


class Phase(enum.Enum):
    """What the runtime says about a workspace."""

    MISSING = "missing"
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class Status:
    phase: Phase
    #: For FAILED: a reason a person can act on (from the runtime's own words).
    reason: str = ""
    #: The workspace generation the runtime object belongs to (see ``Spec``).
    generation: int = 0
    #: Things a person should know about a new workspace (devfile features not
    #: applied, postStart failures), for the MR comment.
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Source:
    """Where the checkout comes from. ``token`` is used by the runtime's clone
    step only and never stored in the workspace."""

    url: str
    ref: str
    sha: str
    path: str  # project path with namespace, e.g. "group/app"
    token: str = field(repr=False, default="")


@dataclass(frozen=True)
class Spec:
    """What a workspace should be."""

    key: WorkspaceKey
    #: Bumped when a workspace must be replaced by a fresh one (reopen, rebuild):
    #: objects of an older generation are removed, not reused.
    generation: int
    image: str
    source: Source
    memory: str = "2g"
    cpus: float = 2.0
    pids: int = 1024
    network: str = "bridge"
    checkout_root: str = "/workspace"
    #: Seconds a new workspace may take to get ready before it counts as failed.
    start_timeout: float = 120.0
    #: What the admin lets a devfile in the checkout ask for.
    devfile: DevfilePolicy = field(default_factory=lambda: DevfilePolicy())

    @property
    def checkout_dir(self) -> str:
        return f"{self.checkout_root}/{self.source.path}"


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: bytes


@dataclass(frozen=True)
class Listed:
    """A runtime object labelled as ours, as found by :meth:`Runtime.list_ours`."""

    key: WorkspaceKey
    generation: int
    name: str


@dataclass(frozen=True)
class EndpointTarget:
    """Where the bot sends a request for one of a workspace's endpoints."""

    host: str
    port: int
    #: Where a visit starts (the devfile endpoint's ``path``).
    path: str = "/"


class Terminal(abc.ABC):
    """An interactive TTY process inside a workspace."""

    @abc.abstractmethod
    def read(self, timeout: float | None = None) -> bytes:
        """Return output as it comes; ``b""`` once the process has ended."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def resize(self, rows: int, cols: int) -> None: ...

    @abc.abstractmethod
    def close(self) -> None:
        """End the process (its session) and free the connection."""


class Runtime(abc.ABC):
    """Creates, inspects, execs into and removes workspaces."""

    @property
    def uid_policy(self) -> UidPolicy:
        """How joining picks a reviewer's uid (see :data:`bot.accounts.UidPolicy`):
        ``auto`` where a workspace cannot map uids of 100000 and up."""
        return "gitlab-id"

    @abc.abstractmethod
    def ensure_running(self, spec: Spec) -> Status:
        """Create (including the checkout) or start the workspace; idempotent.

        Returns without waiting for it to be ready; poll :meth:`status`."""

    @abc.abstractmethod
    def status(self, key: WorkspaceKey) -> Status: ...

    @abc.abstractmethod
    def stop(self, key: WorkspaceKey) -> None:
        """Stop, keeping the checkout and home directories; idempotent."""

    @abc.abstractmethod
    def remove(self, key: WorkspaceKey) -> None:
        """Remove the workspace and all its data; idempotent."""

    @abc.abstractmethod
    def list_ours(self) -> Iterator[Listed]:
        """Every workspace object labelled as this installation's."""

    @abc.abstractmethod
    def exec(
        self, key: WorkspaceKey, argv: Sequence[str], *, user: str = "root"
    ) -> ExecResult:
        """Run ``argv`` (never a shell string) and wait for it."""

    @abc.abstractmethod
    def open_terminal(
        self, key: WorkspaceKey, argv: Sequence[str], *, rows: int, cols: int
    ) -> Terminal:
        """Start ``argv`` on a TTY and hand back its two-way stream."""

    def sync(self, key: WorkspaceKey, source: Source, checkout_dir: str) -> ExecResult:
        """Bring ``source.sha`` into the checkout by fast-forward only, so local
        changes are never touched; a non-zero exit code carries git's reason.

        The default is for runtimes that cannot copy commits in."""
        raise PermanentError("bringing in new commits is not available on this runtime")

    def endpoint(self, key: WorkspaceKey, name: str) -> EndpointTarget:
        """The address of the running workspace's exposed endpoint ``name``.

        Raises:
            PermanentError: no such endpoint, or the workspace is not running
                (the reason is for the viewer).
            TemporaryError: the runtime could not be asked.
        """
        raise PermanentError("endpoints are not available on this runtime")

    def ping(self) -> None:  # noqa: B027 - optional for runtimes with no daemon
        """Raise :class:`bot.errors.TemporaryError` if the runtime is unreachable."""
