"""Settings of the Kubernetes runtime, read from ``RWBOT_K8S_*`` variables.

They are kept apart from :class:`bot.settings.Settings` because only installations
on Kubernetes need them; :func:`config_from_env` parses them once at start-up and
raises :class:`bot.settings.SettingsError` naming the variable when one is wrong.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bot.settings import SettingsError

PREFIX = "RWBOT_K8S_"

#: Where the workspace manifests live unless ``RWBOT_K8S_TEMPLATES`` says otherwise.
DEFAULT_TEMPLATES = Path(__file__).resolve().parents[3] / "templates" / "kubernetes"
#: The in-workspace tool, mounted at /opt/rwbot/rwctl.
DEFAULT_RWCTL = Path(__file__).resolve().parents[2] / "workspace" / "rwctl.sh"

#: Private, link-local and carrier-grade NAT ranges a workspace may not reach by
#: default; 169.254/16 covers the cloud metadata endpoints.
PRIVATE_RANGES = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "fe80::/10",
)

#: internet: public addresses plus the allow list; allowlist: only the allow list;
#: open: no egress rule at all (the cluster's own policy applies).
EGRESS_MODES = ("internet", "allowlist", "open")

_PREFIX_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9-])?$")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_KEY_RE = re.compile(
    r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")


@dataclass(frozen=True)
class KubernetesConfig:
    """How workspaces are laid out in the cluster; see :func:`config_from_env`."""

    namespace_prefix: str = "rwbot-"
    storage_class: str | None = None
    pvc_size: str = "10Gi"
    egress: str = "internet"
    #: Always reachable, even inside the private ranges (GitLab's CIDRs, mirrors).
    egress_allow: tuple[str, ...] = ()
    egress_deny: tuple[str, ...] = PRIVATE_RANGES
    runtime_class: str | None = None
    #: ``False`` runs workspaces in a user namespace (``hostUsers: false``).
    host_users: bool = True
    image_pull_secrets: tuple[str, ...] = ()
    #: Namespace and pod labels of the bot; the only ingress a workspace accepts.
    bot_namespace: str = ""
    bot_pod_labels: tuple[tuple[str, str], ...] = (
        ("app.kubernetes.io/name", "review-workspace-bot"),
    )
    #: Where workspaces may send DNS queries: the cluster DNS's pods, which
    #: CoreDNS and kube-dns label k8s-app=kube-dns in kube-system, and any
    #: extra addresses (a NodeLocal DNSCache's 169.254.20.10/32).
    dns_namespace: str = "kube-system"
    dns_pod_labels: tuple[tuple[str, str], ...] = (("k8s-app", "kube-dns"),)
    dns_cidrs: tuple[str, ...] = ()
    cpu_request: str = "250m"
    memory_request: str = "512Mi"
    ephemeral_storage: str = "10Gi"
    #: Seconds a workspace may take to become ready before it counts as failed.
    ready_timeout: float = 300.0
    #: Seconds a non-interactive exec may run.
    exec_timeout: float = 600.0
    #: The admin's templates; a file missing there comes from DEFAULT_TEMPLATES.
    templates: Path = DEFAULT_TEMPLATES
    rwctl: Path = DEFAULT_RWCTL


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(PREFIX + name)
    return value.strip() if value is not None and value.strip() else None


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    value = _get(env, name)
    if value is None:
        return None
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _name(name: str, value: str | None) -> str | None:
    if value is not None and not _NAME_RE.match(value):
        raise SettingsError(f"{PREFIX}{name}: not a valid Kubernetes name: {value!r}")
    return value


def _quantity(name: str, value: str | None, default: str) -> str:
    if value is None:
        return default
    if not _QUANTITY_RE.match(value):
        raise SettingsError(
            f"{PREFIX}{name}: expected a quantity like 10Gi, got {value!r}"
        )
    return value


def _seconds(name: str, value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise SettingsError(
            f"{PREFIX}{name}: expected seconds, got {value!r}"
        ) from None
    if not seconds > 0:
        raise SettingsError(f"{PREFIX}{name}: must be positive, got {value}")
    return seconds


def _cidrs(name: str, values: tuple[str, ...]) -> tuple[str, ...]:
    cidrs = []
    for value in values:
        try:
            cidrs.append(str(ipaddress.ip_network(value)))
        except ValueError:
            raise SettingsError(f"{PREFIX}{name}: not a CIDR: {value!r}") from None
    return tuple(cidrs)


def _labels(name: str, values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    labels = []
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not _LABEL_KEY_RE.match(key) or not _LABEL_VALUE_RE.match(value):
            raise SettingsError(
                f"{PREFIX}{name}: expected key=value labels, got {item!r}"
            )
        labels.append((key, value))
    return tuple(labels)


def _bool(name: str, value: str | None, default: bool) -> bool:
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{PREFIX}{name}: expected true or false, got {value!r}")


def config_from_env(env: Mapping[str, str]) -> KubernetesConfig:
    """Parse the ``RWBOT_K8S_*`` variables; raise :class:`SettingsError` if wrong."""
    default = KubernetesConfig()

    prefix = _get(env, "NAMESPACE_PREFIX") or default.namespace_prefix
    if not _PREFIX_RE.match(prefix):
        raise SettingsError(
            f"{PREFIX}NAMESPACE_PREFIX: up to 20 lower-case letters, digits and '-'"
        )
    egress = _get(env, "EGRESS") or default.egress
    if egress not in EGRESS_MODES:
        raise SettingsError(
            f"{PREFIX}EGRESS: expected one of {', '.join(EGRESS_MODES)}"
        )
    allow = _cidrs("GITLAB_CIDRS", _list(env, "GITLAB_CIDRS") or ()) + _cidrs(
        "EGRESS_ALLOW", _list(env, "EGRESS_ALLOW") or ()
    )
    deny = _list(env, "EGRESS_DENY")
    pull_secrets = _list(env, "IMAGE_PULL_SECRETS") or ()
    for secret in pull_secrets:
        _name("IMAGE_PULL_SECRETS", secret)
    pod_labels = _list(env, "BOT_POD_LABELS")
    dns_labels = _list(env, "DNS_POD_LABELS")
    templates = _get(env, "TEMPLATES")
    if templates is not None and not Path(templates).is_dir():
        raise SettingsError(f"{PREFIX}TEMPLATES: no such directory: {templates}")
    rwctl = _get(env, "RWCTL")
    if rwctl is not None and not Path(rwctl).is_file():
        raise SettingsError(f"{PREFIX}RWCTL: no such file: {rwctl}")

    return KubernetesConfig(
        namespace_prefix=prefix,
        storage_class=_name("STORAGE_CLASS", _get(env, "STORAGE_CLASS")),
        pvc_size=_quantity("PVC_SIZE", _get(env, "PVC_SIZE"), default.pvc_size),
        egress=egress,
        egress_allow=allow,
        egress_deny=default.egress_deny
        if deny is None
        else _cidrs("EGRESS_DENY", deny),
        runtime_class=_name("RUNTIME_CLASS", _get(env, "RUNTIME_CLASS")),
        host_users=_bool("HOST_USERS", _get(env, "HOST_USERS"), default.host_users),
        image_pull_secrets=pull_secrets,
        bot_namespace=_name("BOT_NAMESPACE", _get(env, "BOT_NAMESPACE")) or "",
        bot_pod_labels=default.bot_pod_labels
        if pod_labels is None
        else _labels("BOT_POD_LABELS", pod_labels),
        dns_namespace=_name("DNS_NAMESPACE", _get(env, "DNS_NAMESPACE"))
        or default.dns_namespace,
        dns_pod_labels=default.dns_pod_labels
        if not dns_labels
        else _labels("DNS_POD_LABELS", dns_labels),
        dns_cidrs=_cidrs("DNS_CIDRS", _list(env, "DNS_CIDRS") or ()),
        cpu_request=_quantity(
            "CPU_REQUEST", _get(env, "CPU_REQUEST"), default.cpu_request
        ),
        memory_request=_quantity(
            "MEMORY_REQUEST", _get(env, "MEMORY_REQUEST"), default.memory_request
        ),
        ephemeral_storage=_quantity(
            "EPHEMERAL_STORAGE",
            _get(env, "EPHEMERAL_STORAGE"),
            default.ephemeral_storage,
        ),
        ready_timeout=_seconds("READY_TIMEOUT", _get(env, "READY_TIMEOUT"), 300.0),
        exec_timeout=_seconds("EXEC_TIMEOUT", _get(env, "EXEC_TIMEOUT"), 600.0),
        templates=Path(templates) if templates else default.templates,
        rwctl=Path(rwctl) if rwctl else default.rwctl,
    )
