"""The devfile as typed values, and the error that lists what is wrong with one.

Only the part of devfile 2.2 that GitLab Workspaces accepts has a type here:
``container`` and ``volume`` components, ``exec`` and ``apply`` commands,
``preStart`` and ``postStart`` events. https://devfile.io/docs/2.2.0/devfile-schema
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.errors import PermanentError

#: The attribute that marks the container GitLab injects its editor into.
INJECT_EDITOR = "gl/inject-editor"

#: How many problems ``DevfileError.reason`` spells out in full.
_REASON_PROBLEMS = 3
#: Past the first problems, unsupported features are still named (key and
#: line only), so a team learns everything the bot cannot follow at once; this
#: bounds the comment for a devfile made of little else (GitLab's own 3 MB cap
#: would allow tens of thousands).
_REASON_UNSUPPORTED_NAMES = 100


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a devfile.

    ``path`` is the key path (``components[0].container.image``, 0-based
    indexes); ``unsupported`` is true for devfile features GitLab Workspaces
    (and so the bot) does not support, as opposed to plain mistakes.
    """

    path: str
    line: int | None
    message: str
    unsupported: bool = False

    def name(self) -> str:
        """The key and line alone: ``parent`` (line 11)."""
        where = f"`{self.path}`" if self.path else "the devfile"
        return where + (f" (line {self.line})" if self.line is not None else "")

    def __str__(self) -> str:
        where = f"line {self.line}, " if self.line is not None else ""
        where += f"`{self.path}`" if self.path else "the devfile"
        kind = "unsupported: " if self.unsupported else ""
        return f"{where}: {kind}{self.message}"


class DevfileError(PermanentError):
    """The devfile cannot be used; ``problems`` lists every reason found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__(f"The devfile cannot be used: {summary(self.problems)}.")


def summary(problems: Sequence[Problem]) -> str:
    """The first problems in full, then every other unsupported feature by key
    and line, then how many other mistakes there are."""
    parts = [str(p) for p in problems[:_REASON_PROBLEMS]]
    rest = problems[_REASON_PROBLEMS:]
    unsupported = [p for p in rest if p.unsupported]
    if unsupported:
        names = ", ".join(p.name() for p in unsupported[:_REASON_UNSUPPORTED_NAMES])
        unnamed = len(unsupported) - _REASON_UNSUPPORTED_NAMES
        if unnamed > 0:
            names += f" and {unnamed} more"
        parts.append(f"also unsupported: {names}")
    mistakes = len(rest) - len(unsupported)
    if mistakes > 0:
        parts.append(f"and {mistakes} more problem{'s' if mistakes > 1 else ''}")

    return "; ".join(parts)


@dataclass(frozen=True)
class Metadata:
    name: str | None = None
    version: str | None = None
    display_name: str | None = None
    description: str | None = None
    #: Any other metadata keys, as written (the schema keeps unknown fields).
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Env:
    name: str
    value: str


@dataclass(frozen=True)
class Endpoint:
    name: str
    target_port: int
    exposure: str = "public"
    protocol: str = "http"
    path: str | None = None
    secure: bool = False
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class VolumeMount:
    name: str
    path: str
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Container:
    image: str
    env: tuple[Env, ...] = ()
    memory_request: str | None = None
    memory_limit: str | None = None
    cpu_request: str | None = None
    cpu_limit: str | None = None
    endpoints: tuple[Endpoint, ...] = ()
    volume_mounts: tuple[VolumeMount, ...] = ()
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    mount_sources: bool | None = None
    source_mapping: str | None = None
    #: As written (the key or the ``overrideCommand`` attribute); when unset,
    #: GitLab's default applies, see ``Devfile.override_command``.
    override_command: bool | None = None
    #: Line of each key, for messages.
    lines: Mapping[str, int] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Volume:
    size: str | None = None
    ephemeral: bool = False


@dataclass(frozen=True)
class Component:
    """A component; exactly one of ``container`` and ``volume`` is set."""

    name: str
    container: Container | None = None
    volume: Volume | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    #: Where the component starts, and its key path, for messages.
    line: int | None = field(default=None, compare=False)
    path: str = field(default="", compare=False)

    @property
    def inject_editor(self) -> bool:
        return self.attributes.get(INJECT_EDITOR) is True


@dataclass(frozen=True)
class ExecCommand:
    command_line: str
    component: str
    working_dir: str | None = None
    label: str | None = None
    hot_reload_capable: bool = False


@dataclass(frozen=True)
class ApplyCommand:
    component: str
    label: str | None = None


@dataclass(frozen=True)
class Command:
    """A command; exactly one of ``exec`` and ``apply`` is set."""

    id: str
    exec: ExecCommand | None = None
    apply: ApplyCommand | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    line: int | None = field(default=None, compare=False)
    path: str = field(default="", compare=False)


@dataclass(frozen=True)
class Events:
    pre_start: tuple[str, ...] = ()
    post_start: tuple[str, ...] = ()
    #: Line of each event's id list, for messages.
    lines: Mapping[str, int] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Devfile:
    schema_version: str
    components: tuple[Component, ...]
    metadata: Metadata = Metadata()
    commands: tuple[Command, ...] = ()
    events: Events = Events()
    variables: Mapping[str, str] = field(default_factory=dict)
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def main(self) -> Component:
        """The container the workspace is about: the one GitLab would inject
        its editor into (``gl/inject-editor: true``), else the first container.

        ``parse`` guarantees there is exactly one.
        """
        containers = [c for c in self.components if c.container is not None]
        marked = [c for c in containers if c.inject_editor]
        return (marked or containers)[0]

    def component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)

    def command(self, id: str) -> Command | None:
        return next((c for c in self.commands if c.id == id), None)


def override_command(component: Component) -> bool:
    """Whether the container's entrypoint is replaced by a keep-alive.

    When the devfile does not say, GitLab's default applies: true for the
    container marked ``gl/inject-editor: true``, false for any other.
    """
    container = component.container
    if container is not None and container.override_command is not None:
        return container.override_command

    return component.inject_editor
