"""Commands, events, and the checks that tie the devfile's parts together:
what a command or a volume mount names must exist, and of the right kind;
there is exactly one main container; endpoint names are unique, and so are
ports across containers.
"""

from __future__ import annotations

from bot.devfile import model
from bot.devfile._fields import RESERVED_PREFIX, Fields, join
from bot.devfile._yaml import Map
from bot.devfile.model import INJECT_EDITOR

_COMMAND = frozenset({"id", "exec", "apply", "attributes"})
_EXEC = frozenset({"commandLine", "component", "workingDir", "label"})
_EXEC |= {"hotReloadCapable"}
_UNSUPPORTED = "not supported by GitLab Workspaces"
_EXEC_UNSUPPORTED = {
    key: f"`{key}` is {_UNSUPPORTED} for exec commands" for key in ("env", "group")
}
_EVENTS_UNSUPPORTED = {
    key: f"`{key}` events are {_UNSUPPORTED} (only preStart and postStart)"
    for key in ("preStop", "postStop")
}


def commands(
    fields: Fields, tree: Map, components: tuple[model.Component, ...]
) -> tuple[model.Command, ...]:
    by_name = {c.name: c for c in components}
    result: list[model.Command] = []
    for item, path, line in fields.items(tree, "commands", ""):
        if (m := fields.mapping(item, path, line)) is None:
            continue
        unsupported = {"composite": f"composite commands are {_UNSUPPORTED}"}
        fields.keys(m, path, _COMMAND, unsupported)
        id = fields.name(m, "id", path)
        kinds = [k for k in ("exec", "apply", "composite") if k in m]
        if not kinds:
            fields.problem(path, m.line, "needs an `exec` or an `apply`")
        elif len(kinds) > 1:
            fields.problem(path, m.line, f"has more than one kind: {', '.join(kinds)}")
        attributes = fields.attributes(m, path, restricted=())
        if id is None or len(kinds) != 1 or kinds[0] == "composite":
            continue

        where, kind_line = join(path, kinds[0]), fields.line(m, kinds[0])
        if (body := fields.mapping(m[kinds[0]], where, kind_line)) is None:
            continue
        if kinds[0] == "exec":
            exec_ = _exec(fields, body, where, by_name)
            if exec_ is not None:
                result.append(model.Command(id, exec_, None, attributes, m.line, path))
        else:
            apply = _apply(fields, body, where, by_name)
            if apply is not None:
                result.append(model.Command(id, None, apply, attributes, m.line, path))

    seen: set[str] = set()
    for command in result:
        if command.id in seen:
            message = f"command id {command.id!r} is used twice"
            fields.problem(join(command.path, "id"), command.line, message)
        seen.add(command.id)
    return tuple(result)


def _exec(
    fields: Fields, m: Map, path: str, components: dict[str, model.Component]
) -> model.ExecCommand | None:
    fields.keys(m, path, _EXEC, _EXEC_UNSUPPORTED)
    command_line = fields.string(m, "commandLine", path, required=True)
    component = fields.string(m, "component", path, required=True)
    kind = fields.kinds.get(component or "")
    if component is not None and kind != "container":
        if kind is None or kind == "volume":
            fields.problem(
                join(path, "component"),
                fields.line(m, "component"),
                f"{component!r} is not a container component of this devfile",
            )
        component = None
    hot_reload = fields.boolean(m, "hotReloadCapable", path)
    if hot_reload:
        fields.problem(
            join(path, "hotReloadCapable"),
            fields.line(m, "hotReloadCapable"),
            f"hot reload is {_UNSUPPORTED} (set it to false)",
            unsupported=True,
        )
    working_dir = fields.string(m, "workingDir", path)
    label = fields.string(m, "label", path)
    if command_line is None or component is None:
        return None

    return model.ExecCommand(command_line, component, working_dir, label, False)


def _apply(
    fields: Fields, m: Map, path: str, components: dict[str, model.Component]
) -> model.ApplyCommand | None:
    fields.keys(
        m, path, frozenset({"component", "label"}), {"group": "is " + _UNSUPPORTED}
    )
    component = fields.string(m, "component", path, required=True)
    label = fields.string(m, "label", path)
    if component is not None and component not in fields.kinds:
        where, line = join(path, "component"), fields.line(m, "component")
        fields.problem(where, line, f"{component!r} is not a component of this devfile")
        return None

    if component is None or component not in components:
        return None  # a component of a kind already reported as unsupported

    return model.ApplyCommand(component, label)


def events(
    fields: Fields, tree: Map, commands: tuple[model.Command, ...]
) -> model.Events:
    if "events" not in tree:
        return model.Events()
    m = fields.mapping(tree["events"], "events", fields.line(tree, "events"))
    if m is None:
        return model.Events()

    fields.keys(m, "events", frozenset({"preStart", "postStart"}), _EVENTS_UNSUPPORTED)
    by_id = {c.id: c for c in commands}
    lists: dict[str, tuple[str, ...]] = {}
    for event in ("preStart", "postStart"):
        ids = []
        for item, path, line in fields.items(m, event, "events"):
            if not isinstance(item, str):
                fields.problem(path, line, "must be a command id")
                continue
            if item.startswith(RESERVED_PREFIX):
                fields.problem(path, line, f"{item!r} must not start with 'gl-'")
            command = by_id.get(item)
            if command is None:
                fields.problem(path, line, f"{item!r} is not a command of this devfile")
            elif event == "postStart" and command.exec is None:
                fields.problem(
                    path, line, f"postStart may run exec commands only; {item!r} is not"
                )
            else:
                ids.append(item)
        lists[event] = tuple(ids)

    lines = {str(k): line for k, line in m.lines.items()}
    return model.Events(lists["preStart"], lists["postStart"], lines)


def check_main(fields: Fields, components: tuple[model.Component, ...]) -> None:
    """Exactly one main container; volume mounts name volumes; endpoint names
    are unique across the devfile, and no two containers share a targetPort
    (https://devfile.io/docs/2.2.0/devfile-validation-rules, "Endpoints")."""
    containers = [c for c in components if c.container is not None]
    if components and not containers:
        fields.problem("components", None, "the devfile needs a container component")
    marked = [c for c in containers if c.inject_editor]
    for extra in marked[1:]:
        fields.problem(
            join(extra.path, f"attributes.{INJECT_EDITOR}"),
            extra.line,
            f"only one container may have {INJECT_EDITOR}: true "
            f"(it is already set on {marked[0].name!r})",
        )

    volumes = {c.name for c in components if c.volume is not None}
    endpoints: set[str] = set()
    # devfile: two containers may not share a targetPort; one may use it twice.
    ports: dict[int, str] = {}
    for component in containers:
        container = component.container
        if container is None:
            continue
        for index, mount in enumerate(container.volume_mounts):
            if mount.name not in volumes:
                path = join(component.path, f"container.volumeMounts[{index}].name")
                message = f"{mount.name!r} is not a volume component of this devfile"
                fields.problem(path, mount.line, message)
        for index, endpoint in enumerate(container.endpoints):
            if endpoint.name in endpoints:
                path = join(component.path, f"container.endpoints[{index}].name")
                message = f"endpoint name {endpoint.name!r} is used twice"
                fields.problem(path, endpoint.line, message)
            endpoints.add(endpoint.name)
            owner = ports.setdefault(endpoint.target_port, component.name)
            if owner != component.name:
                path = join(component.path, f"container.endpoints[{index}].targetPort")
                message = (
                    f"port {endpoint.target_port} is already an endpoint of {owner!r}"
                )
                fields.problem(path, endpoint.line, message)
