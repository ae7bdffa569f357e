"""Devfile 2.2 structure and GitLab's devfile rules, turned into the model.

GitLab's rules are listed under "Validation rules" in
https://docs.gitlab.com/user/workspace/#validation-rules; the devfile ones come
from https://devfile.io/docs/2.2.0/devfile-schema and
https://devfile.io/docs/2.2.0/devfile-validation-rules.
"""

from __future__ import annotations

import re
from typing import Any

from bot.devfile import _links, model, quantity
from bot.devfile._fields import RESERVED_PREFIX, Fields, join
from bot.devfile._yaml import Map
from bot.devfile.model import INJECT_EDITOR

_SCHEMA_VERSION = re.compile(
    r"[2-9]\.[0-9]+\.[0-9]+(-[0-9a-z-]+(\.[0-9a-z-]+)*)?(\+[0-9A-Za-z-.]+)?"
)
_SUPPORTED_VERSION = re.compile(r"2\.2\.[0-9]+")
# Kubernetes' rule for environment variable names.
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
# Set by the devfile tools themselves; a devfile may not define them.
_RESERVED_ENV = frozenset({"PROJECTS_ROOT", "PROJECT_SOURCE"})
_VARIABLE_PREFIXES = ("gl-", "gl_", "GL-", "GL_")
_EXPOSURES = frozenset({"public", "internal", "none"})
_PROTOCOLS = frozenset({"http", "https", "ws", "wss", "tcp", "udp"})

_UNSUPPORTED = "not supported by GitLab Workspaces"
_TOP = frozenset({"schemaVersion", "metadata", "components", "commands"})
_TOP |= {"events", "variables", "attributes"}
_TOP_UNSUPPORTED = {
    key: f"`{key}` is {_UNSUPPORTED}"
    for key in ("parent", "projects", "starterProjects", "dependentProjects")
}
_COMPONENT = frozenset({"name", "attributes", "container", "volume"})
_COMPONENT_KINDS = ("container", "volume")
_UNSUPPORTED_KINDS = ("kubernetes", "openshift", "image", "custom", "plugin")
_CONTAINER = frozenset(
    {"image", "env", "memoryRequest", "memoryLimit", "cpuRequest", "cpuLimit"}
    | {"endpoints", "volumeMounts", "command", "args", "mountSources"}
    | {"sourceMapping", "overrideCommand"}
)
_CONTAINER_UNSUPPORTED = {
    k: "is " + _UNSUPPORTED for k in ("dedicatedPod", "annotation")
}
_ENDPOINT = frozenset({"name", "targetPort", "exposure", "protocol", "path"})
_ENDPOINT |= {"secure", "attributes"}


class Reader(Fields):
    def devfile(self, tree: Any) -> model.Devfile | None:
        if not isinstance(tree, Map):
            self.problem("", 1, "must be a YAML mapping with `schemaVersion` and more")
            return None

        self.keys(tree, "", _TOP, _TOP_UNSUPPORTED)
        version = self.schema_version(tree)
        self.variables = self.read_variables(tree)
        metadata = self.metadata(tree)
        attributes = self.attributes(tree, "", restricted=("pod-overrides",))
        components = self.components(tree)
        commands = _links.commands(self, tree, components)
        events = _links.events(self, tree, commands)
        _links.check_main(self, components)

        return model.Devfile(
            schema_version=version or "",
            metadata=metadata,
            components=components,
            commands=commands,
            events=events,
            variables=self.variables,
            attributes=attributes,
        )

    def schema_version(self, tree: Map) -> str | None:
        version = self.string(tree, "schemaVersion", "", required=True, expand=False)
        if version is None:
            return None

        line = self.line(tree, "schemaVersion")
        if not _SCHEMA_VERSION.fullmatch(version):
            self.problem("schemaVersion", line, f"{version!r} is not a devfile version")
        elif not _SUPPORTED_VERSION.fullmatch(version):
            self.problem(
                "schemaVersion",
                line,
                f"devfile {version} is {_UNSUPPORTED} (use 2.2.0)",
                unsupported=True,
            )
        return version

    def read_variables(self, tree: Map) -> dict[str, str]:
        if "variables" not in tree:
            return {}
        m = self.mapping(tree["variables"], "variables", self.line(tree, "variables"))
        if m is None:
            return {}

        result = {}
        for key, value in m.items():
            path, line = join("variables", key), m.lines[key]
            if not isinstance(key, str):
                self.problem(path, line, "a variable name must be a string")
            elif key.startswith(_VARIABLE_PREFIXES):
                self.problem(path, line, f"{key!r} must not start with gl- or gl_")
            elif not isinstance(value, str):
                self.problem(path, line, "must be a string")
            else:
                result[key] = value
        return result

    def metadata(self, tree: Map) -> model.Metadata:
        if "metadata" not in tree:
            return model.Metadata()
        m = self.mapping(tree["metadata"], "metadata", self.line(tree, "metadata"))
        if m is None:
            return model.Metadata()

        name, version, display, about = (
            self.string(m, key, "metadata", expand=False)
            for key in ("name", "version", "displayName", "description")
        )
        named = {"name", "version", "displayName", "description"}
        extra = {str(k): v for k, v in m.items() if k not in named}
        return model.Metadata(name, version, display, about, extra)

    # Components --------------------------------------------------------------

    def components(self, tree: Map) -> tuple[model.Component, ...]:
        result: list[model.Component] = []
        for item, path, line in self.items(tree, "components", ""):
            m = self.mapping(item, path, line)
            if m is not None and (component := self.component(m, path)) is not None:
                result.append(component)
        if not tree.get("components"):
            line = self.line(tree, "components")
            self.problem("components", line, "the devfile needs at least one component")

        seen: set[str] = set()
        for component in result:
            if component.name in seen:
                message = f"component name {component.name!r} is used twice"
                self.problem(join(component.path, "name"), component.line, message)
            seen.add(component.name)
        return tuple(result)

    def component(self, m: Map, path: str) -> model.Component | None:
        unsupported = {
            kind: f"`{kind}` components are {_UNSUPPORTED} "
            "(only `container` and `volume`)"
            for kind in _UNSUPPORTED_KINDS
        }
        self.keys(m, path, _COMPONENT, unsupported)
        name = self.name(m, "name", path)
        attributes = self.attributes(
            m, path, restricted=("pod-overrides", "container-overrides")
        )
        kinds = [k for k in (*_COMPONENT_KINDS, *_UNSUPPORTED_KINDS) if k in m]
        if not kinds:
            self.problem(path, m.line, "needs a `container` or a `volume`")
        elif len(kinds) > 1:
            self.problem(path, m.line, f"has more than one kind: {', '.join(kinds)}")
        if name is not None and kinds:
            self.kinds.setdefault(name, kinds[0])
        if name is None or len(kinds) != 1 or kinds[0] not in _COMPONENT_KINDS:
            return None

        container = volume = None
        where, line = join(path, kinds[0]), self.line(m, kinds[0])
        body = self.mapping(m[kinds[0]], where, line)
        if body is not None and kinds[0] == "container":
            container = self.container(body, where, attributes)
        elif body is not None:
            volume = self.volume(body, where)
        if container is None and volume is None:
            return None

        if attributes.get(INJECT_EDITOR) is True and container is None:
            where = join(path, f"attributes.{INJECT_EDITOR}")
            self.problem(where, m.line, "only a container can get the editor")
        return model.Component(name, container, volume, attributes, m.line, path)

    def container(
        self, m: Map, path: str, attributes: dict[str, Any]
    ) -> model.Container | None:
        self.keys(m, path, _CONTAINER, _CONTAINER_UNSUPPORTED)
        image = self.string(m, "image", path, required=True)
        memory, cpu = self.resources(m, path, "memory"), self.resources(m, path, "cpu")
        command, args = self.strings(m, "command", path), self.strings(m, "args", path)
        override = self.boolean(m, "overrideCommand", path)
        attribute = attributes.get("overrideCommand")
        if isinstance(attribute, bool):
            if override is not None and override != attribute:
                message = "differs from the `overrideCommand` attribute"
                self.problem(join(path, "overrideCommand"), m.line, message)
            override = attribute
        editor = attributes.get(INJECT_EDITOR) is True
        if (command or args) and (editor if override is None else override):
            self.problem(
                join(path, "command" if command else "args"),
                self.line(m, "command" if command else "args"),
                "`command`/`args` need `overrideCommand: false` "
                "(GitLab replaces this container's entrypoint otherwise)",
            )
        if image is None:
            return None

        return model.Container(
            image=image,
            env=self.env(m, path),
            memory_request=memory[0],
            memory_limit=memory[1],
            cpu_request=cpu[0],
            cpu_limit=cpu[1],
            endpoints=self.endpoints(m, path),
            volume_mounts=self.volume_mounts(m, path),
            command=command,
            args=args,
            mount_sources=self.boolean(m, "mountSources", path),
            source_mapping=self.string(m, "sourceMapping", path),
            override_command=override,
            lines={str(key): line for key, line in m.lines.items()},
        )

    def resources(self, m: Map, path: str, kind: str) -> tuple[str | None, str | None]:
        request = self.quantity(m, f"{kind}Request", path)
        limit = self.quantity(m, f"{kind}Limit", path)
        if request and limit and quantity.parse(request) > quantity.parse(limit):
            where, line = join(path, f"{kind}Request"), self.line(m, f"{kind}Request")
            self.problem(where, line, f"{request} is more than {kind}Limit {limit}")
        return request, limit

    def env(self, m: Map, path: str) -> tuple[model.Env, ...]:
        result = []
        for item, item_path, line in self.items(m, "env", path):
            if (var := self.mapping(item, item_path, line)) is None:
                continue
            self.keys(var, item_path, frozenset({"name", "value"}))
            name = self.string(var, "name", item_path, required=True, expand=False)
            value = self.string(var, "value", item_path, required=True)
            where, name_line = join(item_path, "name"), self.line(var, "name")
            if name is None:
                continue
            if name.startswith(RESERVED_PREFIX):
                self.problem(where, name_line, f"{name!r} must not start with 'gl-'")
            elif name in _RESERVED_ENV:
                self.problem(where, name_line, f"{name} is set by the workspace")
            elif not _ENV_NAME.fullmatch(name):
                self.problem(where, name_line, f"{name!r} is not a variable name")
            elif value is not None:
                result.append(model.Env(name, value))
        return tuple(result)

    def endpoints(self, m: Map, path: str) -> tuple[model.Endpoint, ...]:
        result = []
        for item, item_path, line in self.items(m, "endpoints", path):
            if (e := self.mapping(item, item_path, line)) is None:
                continue
            self.keys(e, item_path, _ENDPOINT, {"annotation": "is " + _UNSUPPORTED})
            name = self.name(e, "name", item_path, max_length=15)
            port = e.get("targetPort")
            if type(port) is not int or not 1 <= port <= 65535:
                where = join(item_path, "targetPort")
                message = "must be a port number, 1 to 65535"
                self.problem(where, self.line(e, "targetPort"), message)
            exposure = self.choice(e, "exposure", item_path, _EXPOSURES, "public")
            protocol = self.choice(e, "protocol", item_path, _PROTOCOLS, "http")
            url_path = self.string(e, "path", item_path)
            secure = self.boolean(e, "secure", item_path) or False
            self.attributes(e, item_path, restricted=())
            if name is not None and type(port) is int and 1 <= port <= 65535:
                endpoint = model.Endpoint(
                    name, port, exposure, protocol, url_path, secure, line
                )
                result.append(endpoint)
        return tuple(result)

    def choice(
        self, m: Map, key: str, path: str, allowed: frozenset[str], default: str
    ) -> str:
        value = self.string(m, key, path)
        if value is None:
            return default
        if value not in allowed:
            message = f"must be one of {', '.join(sorted(allowed))}"
            self.problem(join(path, key), self.line(m, key), message)
            return default
        return value

    def volume_mounts(self, m: Map, path: str) -> tuple[model.VolumeMount, ...]:
        result = []
        for item, item_path, line in self.items(m, "volumeMounts", path):
            if (mount := self.mapping(item, item_path, line)) is None:
                continue
            self.keys(mount, item_path, frozenset({"name", "path"}))
            name = self.string(mount, "name", item_path, required=True)
            mount_path = self.string(mount, "path", item_path)
            if name is not None and mount_path is None:
                mount_path = f"/{name}"  # the devfile default
            if mount_path is not None and not mount_path.startswith("/"):
                where = join(item_path, "path")
                message = "must be an absolute path"
                self.problem(where, self.line(mount, "path"), message)
            elif name is not None and mount_path is not None:
                result.append(model.VolumeMount(name, mount_path, line))
        return tuple(result)

    def volume(self, m: Map, path: str) -> model.Volume:
        self.keys(m, path, frozenset({"size", "ephemeral"}))
        size = self.quantity(m, "size", path)
        return model.Volume(size, self.boolean(m, "ephemeral", path) or False)
