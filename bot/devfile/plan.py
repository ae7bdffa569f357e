"""What the bot does with a devfile: the review workspace it describes.

A review workspace is one container, so the plan is about the devfile's main
container (``Devfile.main``). Everything else the devfile asks for that the bot
leaves out is listed in ``Plan.ignored`` with the reason, so the MR comment can
say so; nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fnmatch import fnmatchcase

from bot.devfile import quantity
from bot.devfile._fields import join
from bot.devfile.model import (
    Component,
    Container,
    Devfile,
    DevfileError,
    Endpoint,
    Problem,
    override_command,
)


@dataclass(frozen=True)
class Resources:
    memory_request: str | None = None
    memory_limit: str | None = None
    cpu_request: str | None = None
    cpu_limit: str | None = None


@dataclass(frozen=True)
class PostStart:
    """A ``postStart`` command; ``working_dir`` None means the checkout."""

    id: str
    command_line: str
    working_dir: str | None
    component: str


@dataclass(frozen=True)
class Volume:
    name: str
    path: str
    size: str | None
    ephemeral: bool


@dataclass(frozen=True)
class Ignored:
    """A part of the devfile the bot leaves out, and why."""

    path: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}, " if self.line is not None else ""
        return f"{where}`{self.path}`: {self.reason}"


@dataclass(frozen=True)
class Plan:
    component: str
    image: str
    env: tuple[tuple[str, str], ...]
    resources: Resources
    endpoints: tuple[Endpoint, ...]
    post_start: tuple[PostStart, ...]
    volumes: tuple[Volume, ...]
    #: The entrypoint: replaced by a keep-alive when ``override_command``,
    #: else ``command``/``args`` if given, else the image's own.
    command: tuple[str, ...]
    args: tuple[str, ...]
    override_command: bool
    ignored: tuple[Ignored, ...]


def workspace_plan(
    devfile: Devfile,
    *,
    allowed_images: Sequence[str] = (),
    max_memory: str | None = None,
    max_cpu: str | None = None,
) -> Plan:
    """The review workspace a parsed devfile describes.

    Args:
        allowed_images: ``fnmatch`` patterns the main image must match; empty
            allows any image.
        max_memory: cap on the main container's memory request and limit (a
            Kubernetes quantity); also its limit when the devfile sets none.
        max_cpu: the same for CPU.

    Raises:
        DevfileError: the image is not allowed, or resources exceed the caps.
        ValueError: a cap is not a Kubernetes quantity (a configuration error).
    """
    main = devfile.main
    container = main.container
    if container is None:  # parse() guarantees a container; keep mypy sure
        raise DevfileError([Problem("components", None, "no container component")])

    problems = _check_image(main, container, allowed_images)
    memory = _capped(main, container, "memory", max_memory, problems)
    cpu = _capped(main, container, "cpu", max_cpu, problems)
    if problems:
        raise DevfileError(problems)

    return Plan(
        component=main.name,
        image=container.image,
        env=tuple((env.name, env.value) for env in container.env),
        resources=Resources(*memory, *cpu),
        endpoints=container.endpoints,
        post_start=_post_start(devfile, main),
        volumes=_volumes(devfile, container),
        command=container.command,
        args=container.args,
        override_command=override_command(main),
        ignored=tuple(_ignored(devfile, main, container)),
    )


def _check_image(
    main: Component, container: Container, allowed: Sequence[str]
) -> list[Problem]:
    if not allowed or any(fnmatchcase(container.image, p) for p in allowed):
        return []

    path = join(main.path, "container.image")
    message = (
        f"image {container.image!r} is not allowed here (allowed: {', '.join(allowed)})"
    )
    return [Problem(path, container.lines.get("image"), message)]


def _capped(
    main: Component,
    container: Container,
    kind: str,
    cap: str | None,
    problems: list[Problem],
) -> tuple[str | None, str | None]:
    """The (request, limit) pair, checked against ``cap``; the cap becomes the
    limit when the devfile sets none, so every review workspace is bounded."""
    request = getattr(container, f"{kind}_request")
    limit = getattr(container, f"{kind}_limit")
    if cap is None:
        return request, limit

    most: Decimal = quantity.parse(cap)
    for key, value in ((f"{kind}Request", request), (f"{kind}Limit", limit)):
        if value is not None and quantity.parse(value) > most:
            path = join(main.path, f"container.{key}")
            message = f"{value} is more than this bot allows ({cap})"
            problems.append(Problem(path, container.lines.get(key), message))

    return request, limit if limit is not None else cap


def _post_start(devfile: Devfile, main: Component) -> tuple[PostStart, ...]:
    result = []
    for id in devfile.events.post_start:
        command = devfile.command(id)
        if command is None or command.exec is None:
            continue
        if command.exec.component == main.name:
            exec_ = command.exec
            result.append(
                PostStart(id, exec_.command_line, exec_.working_dir, exec_.component)
            )
    return tuple(result)


def _volumes(devfile: Devfile, container: Container) -> tuple[Volume, ...]:
    result = []
    for mount in container.volume_mounts:
        component = devfile.component(mount.name)
        if component is not None and component.volume is not None:
            size, ephemeral = component.volume.size, component.volume.ephemeral
            result.append(Volume(mount.name, mount.path, size, ephemeral))
    return tuple(result)


def _ignored(devfile: Devfile, main: Component, container: Container) -> list[Ignored]:
    ignored = []
    mounted = {mount.name for mount in container.volume_mounts}
    for component in devfile.components:
        if component.container is not None and component is not main:
            reason = (
                f"only the main container {main.name!r} runs in a review "
                "workspace; this one is not started"
            )
            ignored.append(Ignored(component.path, component.line, reason))
        elif component.volume is not None and component.name not in mounted:
            reason = "this volume is not mounted in the main container"
            ignored.append(Ignored(component.path, component.line, reason))

    if container.mount_sources is False or container.source_mapping is not None:
        key = "sourceMapping" if container.source_mapping else "mountSources"
        reason = "the bot always checks the project out in its own directory"
        path = join(main.path, f"container.{key}")
        ignored.append(Ignored(path, container.lines.get(key), reason))

    post_start = set(devfile.events.post_start)
    for command in devfile.commands:
        if command.apply is not None:
            reason = "apply commands are not run in a review workspace"
        elif command.id not in post_start:
            reason = "not a postStart command, so the bot does not run it"
        elif command.exec is not None and command.exec.component != main.name:
            reason = f"runs in {command.exec.component!r}, which is not started"
        else:
            continue
        ignored.append(Ignored(command.path, command.line, reason))

    if devfile.events.pre_start:
        reason = "preStart events are not run in a review workspace"
        line = devfile.events.lines.get("preStart")
        ignored.append(Ignored("events.preStart", line, reason))
    return ignored
