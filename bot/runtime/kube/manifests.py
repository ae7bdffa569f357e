"""The objects a workspace is made of, rendered from Jinja2 templates.

Templates live in ``templates/kubernetes``. An admin may point
``RWBOT_K8S_TEMPLATES`` at a directory of their own: a file there replaces the
shipped one of the same name, and every other file still comes from the shipped
directory, so an override holds only what it changes. Every value put into them
passes the ``tojson`` filter, whose output is a quoted YAML scalar, so project
paths and branch names, which come from users, cannot change the document's
structure.
No I/O happens here apart from reading the templates once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
import yaml

from bot import accounts, devfile
from bot.devfile import quantity
from bot.errors import ConfigError, PermanentError
from bot.runtime import base, workspace
from bot.runtime.kube.config import DEFAULT_TEMPLATES, KubernetesConfig

#: What ``rwctl`` needs to add users and drop to them; everything else is dropped.
#: The clone step gets none: it writes only files it creates itself.
CAPABILITIES = ("SETUID", "SETGID", "CHOWN", "FOWNER", "DAC_OVERRIDE", "KILL")

DEPLOYMENT = "workspace"
CONTAINER = "workspace"
SECRET = "clone-credential"  # noqa: S105 - the Secret's name, not its value
APP_LABEL = ("app.kubernetes.io/name", "rwbot-workspace")
#: Deployment annotations: when the pod was last asked for (for the ready
#: timeout) and whether the clone has finished (then the credential is gone).
STARTED_AT = "rwbot.started-at"
CHECKOUT = "rwbot.checkout"
#: What the devfile left out (JSON list of notes), its postStart commands (JSON
#: list of [id, command line, directory]) and the pod they last ran in: a new
#: pod has a new root filesystem, so they run again in every pod.
NOTES = "rwbot.notes"
POST_START = "rwbot.post-start"
POST_START_POD = "rwbot.post-start-pod"
#: Folders the workspace container mounts for itself (and the checkout root).
OWN_MOUNTS = ("/home", "/var/lib/rwbot", "/opt/rwbot")

#: Template per kind, in the order the objects are created.
TEMPLATES = {
    "Namespace": "namespace.yaml.j2",
    "ConfigMap": "tools-configmap.yaml.j2",
    "Secret": "credential-secret.yaml.j2",
    "PersistentVolumeClaim": "pvc.yaml.j2",
    "NetworkPolicy": "networkpolicy.yaml.j2",
    "ResourceQuota": "resourcequota.yaml.j2",
    "LimitRange": "limitrange.yaml.j2",
    "Deployment": "deployment.yaml.j2",
}
SCRIPTS = {"clone_script": "clone.sh", "askpass_script": "askpass.sh"}

_MAX_NAME = 63
_UNSAFE_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|^-|^/|/$|\.lock$")
_DOCKER_MEMORY = re.compile(r"^([0-9]+)([kmg]?)b?$")


def namespace_name(prefix: str, instance: str, key: base.WorkspaceKey) -> str:
    """``<prefix><instance>-p<project>-mr<iid>``, shortened with a hash when the
    result would not fit a DNS label (63 characters)."""
    name = f"{prefix}{instance}-{key.slug()}"
    if len(name) <= _MAX_NAME:
        return name

    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    room = _MAX_NAME - len(key.slug()) - len(digest) - 2
    head = f"{prefix}{instance}"[:room].rstrip("-")
    return f"{head}-{digest}-{key.slug()}"


def labels(instance: str, key: base.WorkspaceKey, generation: int) -> dict[str, str]:
    return {
        base.MANAGED_BY: base.MANAGED_BY_VALUE,
        base.LABEL_INSTANCE: instance,
        base.LABEL_PROJECT: str(key.project_id),
        base.LABEL_MR: str(key.mr_iid),
        base.LABEL_GENERATION: str(generation),
    }


def selector(instance: str) -> dict[str, str]:
    return {APP_LABEL[0]: APP_LABEL[1], base.LABEL_INSTANCE: instance}


def owner_selector(instance: str) -> str:
    """Label selector for everything this installation owns."""
    return f"{base.MANAGED_BY}={base.MANAGED_BY_VALUE},{base.LABEL_INSTANCE}={instance}"


def memory_quantity(memory: str) -> str:
    """Docker-style ``512m``/``2g`` (binary units) as a Kubernetes quantity."""
    match = _DOCKER_MEMORY.match(memory.strip().lower())
    if match is None:
        raise ConfigError(f"workspace memory {memory!r} is not like 512m or 2g")
    number, unit = match.groups()
    return number + {"": "", "k": "Ki", "m": "Mi", "g": "Gi"}[unit]


def cpu_quantity(cpus: float) -> str:
    return f"{max(1, round(cpus * 1000))}m"


def check_source(source: base.Source) -> None:
    """Refuse sources the clone step must not be handed."""
    url = urlsplit(source.url)
    if url.scheme not in ("https", "http") or not url.hostname:
        raise PermanentError(f"cannot clone {source.url!r}: expected an http(s) URL")
    if url.username or url.password:
        raise PermanentError("the clone URL must not carry credentials")
    if not source.ref or _UNSAFE_REF.search(source.ref):
        raise PermanentError(f"cannot check out {source.ref!r}: not a valid git ref")
    if source.sha and not re.fullmatch(r"[0-9a-f]{7,64}", source.sha):
        raise PermanentError(f"cannot check out {source.sha!r}: not a commit id")


@dataclass(frozen=True)
class Mount:
    """A devfile volume: a folder of the workspace's claim (kept while stopped,
    like the checkout), or an ``emptyDir`` when the devfile says ephemeral."""

    volume: str
    path: str
    sub_path: str | None = None
    size_limit: str | None = None


@dataclass(frozen=True)
class PostStart:
    id: str
    command_line: str
    directory: str


@dataclass(frozen=True)
class Shape:
    """The workspace container: the admin's image and limits, or a devfile's."""

    image: str
    cpu_limit: str
    memory_limit: str
    cpu_request: str
    memory_request: str
    env: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    post_start: tuple[PostStart, ...] = ()
    #: For the MR comment: what of the devfile is not applied.
    notes: tuple[str, ...] = ()
    #: The exposed endpoints (:func:`bot.runtime.workspace.endpoint_record`).
    endpoints: str = "{}"


def shape_for(
    spec: base.Spec, config: KubernetesConfig, plan: devfile.Plan | None
) -> Shape:
    """The container ``spec`` and its devfile's ``plan`` (None: no devfile) ask
    for, as the Docker runtime applies them: a limit the devfile leaves out is
    its request, else the admin's; a request never exceeds its limit."""
    cpu_limit, memory_limit = cpu_quantity(spec.cpus), memory_quantity(spec.memory)
    cpu_request, memory_request = config.cpu_request, config.memory_request
    if plan is None:
        return Shape(
            spec.image,
            cpu_limit,
            memory_limit,
            _at_most(cpu_request, cpu_limit),
            _at_most(memory_request, memory_limit),
        )

    wanted = plan.resources
    cpu_limit = wanted.cpu_limit or wanted.cpu_request or cpu_limit
    memory_limit = wanted.memory_limit or wanted.memory_request or memory_limit
    mounts, notes = _mounts(spec, plan)
    return Shape(
        image=plan.image,
        cpu_limit=cpu_limit,
        memory_limit=memory_limit,
        cpu_request=_at_most(wanted.cpu_request or cpu_request, cpu_limit),
        memory_request=_at_most(wanted.memory_request or memory_request, memory_limit),
        env=plan.env,
        mounts=mounts,
        post_start=tuple(
            PostStart(c.id, c.command_line, c.working_dir or spec.checkout_dir)
            for c in plan.post_start
        ),
        notes=(*workspace.notes(plan), *notes),
        endpoints=workspace.endpoint_record(plan),
    )


def created_shape(deployment: Mapping[str, Any], fallback: Shape) -> Shape:
    """``fallback`` with the limits and requests the Deployment was created with,
    so that what a restart re-applies (quota, limit range) agrees with the pod."""
    pod = (deployment.get("spec") or {}).get("template", {}).get("spec") or {}
    for container in pod.get("containers") or []:
        if container.get("name") == CONTAINER:
            resources = container.get("resources") or {}
            limits = resources.get("limits") or {}
            requests = resources.get("requests") or {}
            return dataclasses.replace(
                fallback,
                cpu_limit=str(limits.get("cpu", fallback.cpu_limit)),
                memory_limit=str(limits.get("memory", fallback.memory_limit)),
                cpu_request=str(requests.get("cpu", fallback.cpu_request)),
                memory_request=str(requests.get("memory", fallback.memory_request)),
            )
    return fallback


def post_start_of(deployment: Mapping[str, Any]) -> tuple[PostStart, ...]:
    steps = json.loads(_annotations(deployment).get(POST_START) or "[]")
    return tuple(PostStart(str(i), str(line), str(d)) for i, line, d in steps)


def notes_of(deployment: Mapping[str, Any]) -> tuple[str, ...]:
    notes = json.loads(_annotations(deployment).get(NOTES) or "[]")
    return tuple(str(note) for note in notes)


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def _at_most(request: str, limit: str) -> str:
    return limit if quantity.parse(request) > quantity.parse(limit) else request


def _mounts(spec: base.Spec, plan: devfile.Plan) -> tuple[tuple[Mount, ...], list[str]]:
    """Devfile volumes as mounts; a path the workspace already mounts is a note."""
    taken = {spec.checkout_root, *OWN_MOUNTS}
    mounts, notes = [], []
    for n, volume in enumerate(plan.volumes):
        path = posixpath.normpath(volume.path)
        if path in taken or path == "/":
            notes.append(
                f"devfile volume {volume.name} is not mounted: {path} is already "
                "the workspace's own"
            )
            continue
        taken.add(path)
        if volume.ephemeral:
            mounts.append(Mount(f"devfile-{n}", path, size_limit=volume.size))
            continue
        mounts.append(Mount("data", path, sub_path=f"devfile/{volume.name}"))
        if volume.size:
            notes.append(
                f"devfile volume {volume.name}: its size ({volume.size}) is not "
                "reserved; it shares the workspace's volume"
            )
    return tuple(mounts), notes


def _split_cidrs(cidrs: tuple[str, ...]) -> tuple[list[str], list[str]]:
    v4 = [c for c in cidrs if ipaddress.ip_network(c).version == 4]
    v6 = [c for c in cidrs if ipaddress.ip_network(c).version == 6]
    return v4, v6


def _tojson(value: object) -> str:
    # ASCII-only JSON is a valid YAML flow scalar: no line separators sneak in.
    return json.dumps(value, ensure_ascii=True)


#: A workspace rendered once at start to try an admin's templates out.
_PROBE = base.Spec(
    base.WorkspaceKey(1, 1),
    1,
    "registry.invalid/workspace:probe",
    base.Source(
        "https://gitlab.invalid/group/app.git",
        "refs/merge-requests/1/head",
        "0" * 40,
        "group/app",
    ),
)


class Renderer:
    """Renders a workspace's objects; templates and scripts are read once."""

    def __init__(self, config: KubernetesConfig, instance: str) -> None:
        self._config = config
        self._instance = instance
        self._dirs = _template_dirs(config.templates)
        self._env = jinja2.Environment(
            # The admin's directory first, the shipped one for what it leaves out.
            loader=jinja2.ChoiceLoader(
                [jinja2.FileSystemLoader(str(d)) for d in self._dirs]
            ),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # noqa: S701 - YAML, not HTML; values go through tojson
            keep_trailing_newline=True,
        )
        self._env.filters["tojson"] = _tojson
        self._scripts = {
            name: _read(_first(self._dirs, filename))
            for name, filename in SCRIPTS.items()
        }
        self._rwctl = _read(config.rwctl)
        if len(self._dirs) > 1:
            # An admin's template that renders the wrong thing stops the bot at
            # start, naming its file, not every workspace later.
            self.render(_PROBE, started_at=0.0)

    def namespace(self, key: base.WorkspaceKey) -> str:
        return namespace_name(self._config.namespace_prefix, self._instance, key)

    def render(
        self, spec: base.Spec, *, started_at: float, shape: Shape | None = None
    ) -> dict[str, dict[str, Any]]:
        """Every object of the workspace, by kind, in creation order; the
        container as ``shape`` says (default: no devfile)."""
        check_source(spec.source)
        config = self._config
        container = shape or shape_for(spec, config, None)
        deny_v4, deny_v6 = _split_cidrs(config.egress_deny)
        values = {
            "namespace": self.namespace(spec.key),
            "labels": labels(self._instance, spec.key, spec.generation),
            "selector": selector(self._instance),
            "pod_labels": {
                **labels(self._instance, spec.key, spec.generation),
                **selector(self._instance),
            },
            "image": container.image,
            "clone_image": spec.image,
            "env": [{"name": name, "value": value} for name, value in container.env],
            "mounts": [_mount_values(m) for m in container.mounts],
            "notes": json.dumps(list(container.notes)),
            "endpoints": container.endpoints,
            "post_start": json.dumps(
                [[s.id, s.command_line, s.directory] for s in container.post_start]
            ),
            "source_url": spec.source.url,
            "source_ref": spec.source.ref,
            "source_sha": spec.source.sha,
            "init_argv": accounts.init_argv(spec.checkout_dir),
            "checkout_root": spec.checkout_root,
            "checkout_dir": spec.checkout_dir,
            "token": spec.source.token,
            "started_at": f"{started_at:.3f}",
            "capabilities": list(CAPABILITIES),
            "cpu_limit": container.cpu_limit,
            "memory_limit": container.memory_limit,
            "cpu_request": container.cpu_request,
            "memory_request": container.memory_request,
            "ephemeral_storage": config.ephemeral_storage,
            "storage_class": config.storage_class,
            "pvc_size": config.pvc_size,
            "runtime_class": config.runtime_class,
            "host_users": config.host_users,
            "image_pull_secrets": list(config.image_pull_secrets),
            "egress": config.egress,
            "egress_allow": list(config.egress_allow),
            "deny_v4": deny_v4,
            "deny_v6": deny_v6,
            "dns_namespace": config.dns_namespace,
            "dns_pod_labels": dict(config.dns_pod_labels),
            "dns_cidrs": list(config.dns_cidrs),
            "bot_namespace": config.bot_namespace,
            "bot_pod_labels": dict(config.bot_pod_labels),
            "rwctl": self._rwctl,
            **self._scripts,
        }
        return {
            kind: self._one(kind, filename, values)
            for kind, filename in TEMPLATES.items()
        }

    def _one(
        self, kind: str, filename: str, values: Mapping[str, object]
    ) -> dict[str, Any]:
        try:
            text = self._env.get_template(filename).render(values)
            obj = yaml.safe_load(text)
        except (jinja2.TemplateError, yaml.YAMLError) as err:
            raise ConfigError(
                f"workspace template {filename} is broken: {err}"
            ) from err
        if not isinstance(obj, dict) or obj.get("kind") != kind:
            raise ConfigError(f"workspace template {filename} must render one {kind}")
        return obj


def _mount_values(mount: Mount) -> dict[str, object]:
    return {
        "volume": mount.volume,
        "path": mount.path,
        "sub_path": mount.sub_path,
        "size_limit": mount.size_limit,
    }


def _template_dirs(override: Path) -> tuple[Path, ...]:
    if override.resolve() == DEFAULT_TEMPLATES:
        return (DEFAULT_TEMPLATES,)
    return (override, DEFAULT_TEMPLATES)


def _first(dirs: tuple[Path, ...], filename: str) -> Path:
    """``filename`` in the first of ``dirs`` that has it (else in the last)."""
    found = (d / filename for d in dirs if (d / filename).is_file())
    return next(found, dirs[-1] / filename)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from err
