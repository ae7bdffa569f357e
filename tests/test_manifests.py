"""Workspace manifests and the Helm chart, checked offline.

Covers: every rendered workspace object (default, fully configured, and shaped
by a devfile with env, limits, persistent and ephemeral volumes) and the chart
rendered with default values and with ``tests/helm/full-values.yaml`` validate
strictly against the oldest and newest Kubernetes minor we claim
(``SUPPORTED_KUBERNETES``); ``helm lint --strict`` is clean; our own rules
(capabilities, no privilege escalation, seccomp, resources, labels, read-only
root filesystem, no service account token in workspaces); untrusted strings
cannot change a manifest's structure; NOTES tell the admin the URLs to register;
with ``endpoints.domain`` the chart sets RWBOT_ENDPOINTS_DOMAIN, routes the
wildcard host with its own TLS Secret and NOTES ask for wildcard DNS and
certificate, and without it none of that (the domain is schema-checked); web
pods carry the labels workspace NetworkPolicies admit; and the chart's
ClusterRole grants exactly the (apiGroup, resource, verb) triples the runtime
was seen to use against the API double in a full lifecycle.

Also: an admin's template directory replaces only the files it holds (and a
template that renders the wrong object is refused naming its file), and the
chart mounts one from a ConfigMap where RWBOT_K8S_TEMPLATES points; every
egress mode validates, DNS goes only to the cluster DNS (or the admin's), and
the clone step has no capabilities; the web container runs the image's own
command; the chart refuses an endpoints domain holding the bot's host and NOTES
warn about a missing wildcard certificate; the rendered configuration parses
with the bot's own settings parsers; the schema refuses wrong types.
"""

from __future__ import annotations

import base64
import dataclasses
import inspect
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from gunicorn import config as gunicorn_config

from bot import accounts, devfile, settings
from bot.errors import ConfigError, PermanentError
from bot.runtime import base, workspace
from bot.runtime.kube import config as kube_config
from bot.runtime.kube import manifests
from bot.runtime.kubernetes import (
    SUPPORTED_KUBERNETES,
    KubernetesConfig,
    KubernetesRuntime,
)
from tests import kube_double
from tests.gitlab_double import GitLabDouble
from tests.kube_double import KubeDouble, PodBehaviour
from tests.services import wait_for

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "review-workspace-bot"
FULL_VALUES = ROOT / "tests" / "helm" / "full-values.yaml"
SHIPPED_TEMPLATES = ROOT / "templates" / "kubernetes"
README = ROOT / "README.md"
DOCKERFILE = ROOT / "Dockerfile"
VERSIONS = [f"{minor}.0" for minor in SUPPORTED_KUBERNETES]
HELM_INFO = 1  # helm lint severities: 1 info, 2 warning, 3 error

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def rwctl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rwctl") / "rwctl.sh"
    path.write_text("#!/bin/sh\necho rwctl placeholder\n")
    return path


def full_config(rwctl: Path) -> KubernetesConfig:
    return KubernetesConfig(
        storage_class="fast-ssd",
        egress_allow=("10.20.0.0/16", "2001:db8::/32"),
        runtime_class="gvisor",
        host_users=False,
        image_pull_secrets=("registry",),
        bot_namespace="bots",
        rwctl=rwctl,
    )


def spec(ref: str = "feature/x", path: str = "group/app") -> base.Spec:
    source = base.Source(
        "https://gitlab.example.com/group/app.git", ref, "a" * 40, path, token="t0k"
    )
    return base.Spec(base.WorkspaceKey(7, 3), 2, "registry.example.com/ws:1", source)


DEVFILE = """\
schemaVersion: 2.2.0
components:
  - name: tools
    container:
      image: registry.example.com/node:22
      memoryLimit: 256Mi
      cpuLimit: "3"
      env: [{name: NODE_ENV, value: development}]
      volumeMounts:
        - {name: cache, path: /cache}
        - {name: scratch, path: /scratch/}
        - {name: homes, path: /home}
  - {name: cache, volume: {size: 5Gi}}
  - {name: scratch, volume: {ephemeral: true}}
  - {name: homes, volume: {}}
commands:
  - id: install
    exec: {component: tools, commandLine: npm ci}
events:
  postStart: [install]
"""


def workspace_objects(
    config: KubernetesConfig,
    the_spec: base.Spec | None = None,
    plan: devfile.Plan | None = None,
) -> dict[str, Obj]:
    renderer = manifests.Renderer(config, "prod")
    the_spec = the_spec or spec()
    shape = manifests.shape_for(the_spec, config, plan)
    return renderer.render(the_spec, started_at=1700000000.0, shape=shape)


def devfile_plan() -> devfile.Plan:
    return devfile.workspace_plan(devfile.parse(DEVFILE))


def chart_objects(values: Obj) -> list[Obj]:
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name="rwbot", namespace="bots", is_install=True)
    objects: list[Obj] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def notes(values: Obj) -> str:
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name="rwbot", namespace="bots", is_install=True)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def full_values() -> Obj:
    return dict(yaml.safe_load(FULL_VALUES.read_text()))


def pod_specs(objects: list[Obj]) -> Iterator[Obj]:
    for obj in objects:
        if obj["kind"] == "Deployment":
            yield obj["spec"]["template"]["spec"]


# -- versions --------------------------------------------------------------------------


def test_newest_claimed_version_is_the_newest_schema_we_have() -> None:
    assert kubernetes_validate.latest_version().startswith(
        SUPPORTED_KUBERNETES[1] + "."
    )
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={SUPPORTED_KUBERNETES[0]}.0-0"
    assert chart["apiVersion"] == "v2"


# -- workspace manifests ---------------------------------------------------------------


def config_for(which: str, rwctl: Path) -> KubernetesConfig:
    """default, full (egress: internet), or full with another egress mode."""
    if which in ("default", "devfile"):
        return KubernetesConfig(rwctl=rwctl)
    mode = {"full": "internet"}.get(which, which)
    return dataclasses.replace(
        full_config(rwctl), egress=mode, dns_cidrs=("169.254.20.10/32",)
    )


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("which", ["default", "full", "allowlist", "open", "devfile"])
def test_workspace_manifests_validate_strictly(
    rwctl: Path, which: str, version: str
) -> None:
    config = config_for(which, rwctl)
    plan = devfile_plan() if which == "devfile" else None
    for obj in workspace_objects(config, plan=plan).values():
        kubernetes_validate.validate(obj, version, strict=True)


def test_devfile_shapes_the_workspace_container_and_its_limits(rwctl: Path) -> None:
    objects = workspace_objects(KubernetesConfig(rwctl=rwctl), plan=devfile_plan())
    deployment = objects["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (shell,) = pod["containers"]
    (clone,) = pod["initContainers"]
    annotations = deployment["metadata"]["annotations"]

    assert (shell["image"], clone["image"]) == (
        "registry.example.com/node:22",
        "registry.example.com/ws:1",
    )
    assert shell["env"] == [{"name": "NODE_ENV", "value": "development"}]
    # A request never exceeds its limit: the admin's 512Mi becomes 256Mi.
    assert shell["resources"]["limits"]["memory"] == "256Mi"
    assert shell["resources"]["requests"]["memory"] == "256Mi"
    limits = objects["LimitRange"]["spec"]["limits"][0]
    assert limits["max"]["cpu"] == "3"
    assert limits["defaultRequest"]["memory"] == "256Mi"
    assert objects["ResourceQuota"]["spec"]["hard"]["limits.memory"] == "256Mi"
    mounts = [
        m for m in shell["volumeMounts"] if m["mountPath"] in ("/cache", "/scratch")
    ]
    assert mounts == [
        {"name": "data", "mountPath": "/cache", "subPath": "devfile/cache"},
        {"name": "devfile-1", "mountPath": "/scratch"},
    ]
    assert {"name": "devfile-1", "emptyDir": {}} in pod["volumes"]
    assert [m["mountPath"] for m in shell["volumeMounts"]].count("/home") == 1
    assert annotations[manifests.POST_START] == (
        '[["install", "npm ci", "/workspace/group/app"]]'
    )
    assert manifests.notes_of(deployment) == (
        "devfile volume cache: its size (5Gi) is not reserved; it shares the "
        "workspace's volume",
        "devfile volume homes is not mounted: /home is already the workspace's own",
    )


ENDPOINT_DEVFILE = """\
schemaVersion: 2.2.0
components:
  - name: web
    container:
      image: registry.example.com/node:22
      endpoints:
        - {name: app, targetPort: 3000, path: /start}
        - {name: debug, targetPort: 9229, exposure: internal}
"""


def test_network_policy_admits_the_bot_on_the_devfile_endpoints_ports(
    rwctl: Path,
) -> None:
    plan = devfile.workspace_plan(devfile.parse(ENDPOINT_DEVFILE))
    config = KubernetesConfig(rwctl=rwctl, bot_namespace="bots")
    objects = workspace_objects(config, plan=plan)

    (rule,) = objects["NetworkPolicy"]["spec"]["ingress"]
    assert "ports" not in rule  # every port from the bot's pods: 3000 included
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "bots"
    }
    record = objects["Deployment"]["metadata"]["annotations"][base.ENDPOINTS]
    assert workspace.endpoint_in(record, "app") == (3000, "/start")
    with pytest.raises(PermanentError):
        workspace.endpoint_in(record, "debug")  # internal: not exposed
    for obj in objects.values():
        kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)


def test_workspace_containers_keep_only_the_capabilities_rwctl_needs(
    rwctl: Path,
) -> None:
    pod = workspace_objects(full_config(rwctl))["Deployment"]["spec"]["template"][
        "spec"
    ]

    (clone,) = pod["initContainers"]
    (shell,) = pod["containers"]
    assert shell["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["SETUID", "SETGID", "CHOWN", "FOWNER", "DAC_OVERRIDE", "KILL"],
    }
    # The clone writes only what it creates: it needs no capability at all.
    assert clone["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    for container in (clone, shell):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert set(container["resources"]["limits"]) == {
            "cpu",
            "memory",
            "ephemeral-storage",
        }
        assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert pod["hostUsers"] is False
    assert pod["runtimeClassName"] == "gvisor"
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["automountServiceAccountToken"] is False
    assert pod["shareProcessNamespace"] is True
    assert pod["containers"][0]["command"] == ["sleep", "infinity"]


def test_rwctl_init_runs_on_every_start_with_its_arguments_outside_the_script(
    rwctl: Path,
) -> None:
    the_spec = spec(path="group/app'; rm -rf /")
    pod = workspace_objects(KubernetesConfig(rwctl=rwctl), the_spec)["Deployment"][
        "spec"
    ]["template"]["spec"]
    (shell,) = pod["containers"]
    command = shell["lifecycle"]["postStart"]["exec"]["command"]

    assert command[:2] == ["/bin/sh", "-c"]
    assert "group/app" not in command[2]
    assert command[4:] == accounts.init_argv(the_spec.checkout_dir)
    assert shell["readinessProbe"]["exec"]["command"] == [
        "test",
        "-e",
        "/run/rwbot/ready",
    ]
    mounts = {m["mountPath"]: m.get("subPath") for m in shell["volumeMounts"]}
    assert mounts["/var/lib/rwbot"] == "rwbot-state"  # rwctl's records persist
    assert mounts["/home"] == "home"


def test_default_workspace_leaves_host_users_and_runtime_class_alone(
    rwctl: Path,
) -> None:
    pod = workspace_objects(KubernetesConfig(rwctl=rwctl))["Deployment"]["spec"][
        "template"
    ]["spec"]

    assert "hostUsers" not in pod
    assert "runtimeClassName" not in pod
    assert "imagePullSecrets" not in pod


def test_rwctl_is_mounted_executable_from_the_config_map(rwctl: Path) -> None:
    objects = workspace_objects(KubernetesConfig(rwctl=rwctl))
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "rwctl")
    mount = next(
        m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "rwctl"
    )

    assert volume["configMap"]["items"] == [
        {"key": "rwctl", "path": "rwctl", "mode": 0o755}
    ]
    assert mount["mountPath"] == "/opt/rwbot"
    assert objects["ConfigMap"]["data"]["rwctl"] == rwctl.read_text()


def test_every_workspace_object_carries_our_labels(rwctl: Path) -> None:
    objects = workspace_objects(KubernetesConfig(rwctl=rwctl))

    for obj in objects.values():
        labels = obj["metadata"]["labels"]
        assert labels[base.MANAGED_BY] == base.MANAGED_BY_VALUE
        assert labels[base.LABEL_INSTANCE] == "prod"
        assert labels[base.LABEL_GENERATION] == "2"
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[base.LABEL_PROJECT] == "7"


def test_network_policy_admits_only_the_bot_and_denies_private_ranges(
    rwctl: Path,
) -> None:
    policy = workspace_objects(full_config(rwctl))["NetworkPolicy"]["spec"]
    default = workspace_objects(
        KubernetesConfig(
            rwctl=rwctl,
            egress="internet",
            egress_allow=("10.20.0.0/16",),
            bot_namespace="bots",
        )
    )
    egress = default["NetworkPolicy"]["spec"]["egress"]

    assert policy["ingress"] == [
        {
            "from": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "bots"}
                    },
                    "podSelector": {
                        "matchLabels": {
                            "app.kubernetes.io/name": "review-workspace-bot"
                        }
                    },
                }
            ]
        }
    ]
    assert {"ipBlock": {"cidr": "10.20.0.0/16"}} in egress[1]["to"]
    internet = egress[2]["to"][0]["ipBlock"]
    assert internet["cidr"] == "0.0.0.0/0"
    assert set(internet["except"]) >= {
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
    }
    assert egress[0] == {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [
            {"protocol": "UDP", "port": 53},
            {"protocol": "TCP", "port": 53},
        ],
    }


def test_dns_goes_to_the_cluster_dns_the_admin_names_and_nowhere_else(
    rwctl: Path,
) -> None:
    config = kube_config.config_from_env(
        {
            "RWBOT_K8S_DNS_NAMESPACE": "dns-system",
            "RWBOT_K8S_DNS_POD_LABELS": "app.kubernetes.io/name=coredns,tier=dns",
            "RWBOT_K8S_DNS_CIDRS": "169.254.20.10/32",
            "RWBOT_K8S_RWCTL": str(rwctl),
        }
    )
    policy = workspace_objects(config)["NetworkPolicy"]
    (dns,) = [
        rule
        for rule in policy["spec"]["egress"]
        if {"protocol": "UDP", "port": 53} in rule.get("ports", [])
    ]

    assert dns["to"] == [
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": "dns-system"}
            },
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/name": "coredns", "tier": "dns"}
            },
        },
        {"ipBlock": {"cidr": "169.254.20.10/32"}},
    ]
    # Port 53 is open only towards those: no rule names a port without peers.
    assert all("to" in rule for rule in policy["spec"]["egress"])
    for bad in (
        {"RWBOT_K8S_DNS_POD_LABELS": "k8s-app"},
        {"RWBOT_K8S_DNS_NAMESPACE": "Kube_System"},
        {"RWBOT_K8S_DNS_CIDRS": "kube-dns.kube-system"},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            kube_config.config_from_env(bad)


def test_egress_modes_open_and_allowlist_shape_the_policy(rwctl: Path) -> None:
    open_policy = workspace_objects(config_for("open", rwctl))["NetworkPolicy"]
    allow = workspace_objects(config_for("allowlist", rwctl))["NetworkPolicy"]

    assert open_policy["spec"]["policyTypes"] == ["Ingress"]
    assert "egress" not in open_policy["spec"]
    assert allow["spec"]["policyTypes"] == ["Ingress", "Egress"]
    peers = [peer for rule in allow["spec"]["egress"] for peer in rule["to"]]
    cidrs = [peer["ipBlock"]["cidr"] for peer in peers if "ipBlock" in peer]
    assert cidrs == ["169.254.20.10/32", "10.20.0.0/16", "2001:db8::/32"]


def test_untrusted_strings_stay_inside_their_values(rwctl: Path) -> None:
    ref = "feature/\"a'b{c}&d!|>%#e"
    path = "group/app\n        evil: {injected: true}\u2028#"
    deployment = workspace_objects(KubernetesConfig(rwctl=rwctl), spec(ref, path))[
        "Deployment"
    ]
    clone = deployment["spec"]["template"]["spec"]["initContainers"][0]
    env = {e["name"]: e["value"] for e in clone["env"]}

    assert env["RWBOT_SOURCE_REF"] == ref
    assert env["RWBOT_CHECKOUT_DIR"] == "/workspace/" + path
    assert "evil" not in clone


# -- the admin's templates -------------------------------------------------------------

LIMIT_RANGE_OVERRIDE = """\
apiVersion: v1
kind: LimitRange
metadata:
  name: workspace
  namespace: {{ namespace | tojson }}
  labels: {{ labels | tojson }}
  annotations: {"example.com/edited-by": "the admin"}
spec:
  limits:
    - type: Container
      max: {cpu: {{ cpu_limit | tojson }}, memory: "1Gi"}
"""


def test_an_override_directory_replaces_one_template_and_keeps_the_others(
    rwctl: Path, tmp_path: Path
) -> None:
    (tmp_path / "limitrange.yaml.j2").write_text(LIMIT_RANGE_OVERRIDE)
    config = kube_config.config_from_env(
        {"RWBOT_K8S_TEMPLATES": str(tmp_path), "RWBOT_K8S_RWCTL": str(rwctl)}
    )
    shipped = workspace_objects(KubernetesConfig(rwctl=rwctl))
    objects = workspace_objects(config)

    limits = objects.pop("LimitRange")
    assert limits["metadata"]["annotations"] == {"example.com/edited-by": "the admin"}
    assert limits["spec"]["limits"] == [
        {"type": "Container", "max": {"cpu": "2000m", "memory": "1Gi"}}
    ]
    del shipped["LimitRange"]
    assert objects == shipped
    # The clone scripts too come from the shipped directory.
    assert (
        objects["ConfigMap"]["data"]["clone"]
        == (SHIPPED_TEMPLATES / "clone.sh").read_text()
    )
    kubernetes_validate.validate(limits, VERSIONS[-1], strict=True)


def test_an_override_directory_may_replace_a_clone_script(
    rwctl: Path, tmp_path: Path
) -> None:
    (tmp_path / "askpass.sh").write_text("#!/bin/sh\ncat /elsewhere/token\n")
    config = KubernetesConfig(templates=tmp_path, rwctl=rwctl)

    data = workspace_objects(config)["ConfigMap"]["data"]

    assert data["askpass"] == "#!/bin/sh\ncat /elsewhere/token\n"
    assert data["clone"] == (SHIPPED_TEMPLATES / "clone.sh").read_text()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: data}\n",
            "pvc.yaml.j2 must render one PersistentVolumeClaim",
        ),
        ("- a list\n- of things\n", "pvc.yaml.j2 must render one PersistentVolume"),
        ("kind: {{ no_such_value }}\n", "pvc.yaml.j2 is broken"),
        ("kind: [unclosed\n", "pvc.yaml.j2 is broken"),
    ],
    ids=["other-kind", "not-an-object", "undefined-value", "bad-yaml"],
)
def test_an_override_that_renders_no_such_object_stops_the_bot_at_start(
    rwctl: Path, tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "pvc.yaml.j2").write_text(text)

    # The runtime builds its renderer at start-up: the error names the file.
    with pytest.raises(ConfigError, match=message):
        manifests.Renderer(KubernetesConfig(templates=tmp_path, rwctl=rwctl), "prod")


# -- the chart -------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("which", ["default", "full"])
def test_chart_lints_clean(which: str, version: str) -> None:
    values = {} if which == "default" else full_values()

    result = helm.lint(str(CHART), values, strict=True, kube_version=f"v{version}")

    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] > HELM_INFO] == []


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("which", ["default", "full"])
def test_chart_objects_validate_strictly(which: str, version: str) -> None:
    objects = chart_objects({} if which == "default" else full_values())

    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("which", ["default", "full"])
def test_bot_pods_run_unprivileged_on_a_read_only_root(which: str) -> None:
    objects = chart_objects({} if which == "default" else full_values())

    for pod in pod_specs(objects):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}} in pod["volumes"]
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert (
                container["resources"]["limits"] and container["resources"]["requests"]
            )
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    for obj in objects:
        assert (
            obj["metadata"]["labels"]["app.kubernetes.io/name"]
            == "review-workspace-bot"
        )


def test_sqlite_runs_web_and_worker_in_one_single_replica_pod() -> None:
    objects = chart_objects({"web": {"replicas": 3}})
    deployments = [o for o in objects if o["kind"] == "Deployment"]

    (bot,) = deployments
    assert bot["spec"]["replicas"] == 1
    assert bot["spec"]["strategy"] == {"type": "Recreate"}
    assert [c["name"] for c in bot["spec"]["template"]["spec"]["containers"]] == [
        "web",
        "worker",
    ]
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    assert config["RWBOT_DATABASE_URL"] == "sqlite:////data/rwbot.db"
    assert not [o for o in objects if o["kind"] == "PodDisruptionBudget"]


def test_postgres_splits_web_and_worker_and_protects_web_with_a_budget() -> None:
    objects = chart_objects(full_values())
    deployments = {
        o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"
    }

    assert deployments["rwbot-web"]["spec"]["replicas"] == 3
    assert deployments["rwbot-worker"]["spec"]["replicas"] == 2
    web = deployments["rwbot-web"]["spec"]["template"]["spec"]["containers"][0]
    worker = deployments["rwbot-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in web and "args" not in web  # the image's own
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["command"] == ["rwbot", "worker"]
    env = {e["name"]: e for e in web["env"]}
    assert env["RWBOT_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "rwbot",
        "key": "database-url",
    }
    for name in (
        "GITLAB_TOKEN",
        "WEBHOOK_SECRET",
        "WEBHOOK_SIGNING_SECRET",
        "OAUTH_CLIENT_ID",
        "OAUTH_CLIENT_SECRET",
        "SESSION_SECRET",
    ):
        assert env[f"RWBOT_{name}_FILE"]["value"].startswith("/run/secrets/rwbot/")
    (budget,) = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert budget["spec"]["minAvailable"] == 1


def test_existing_secrets_are_referenced_not_copied() -> None:
    objects = chart_objects(full_values())
    pod = next(pod_specs(objects))
    sources = next(v for v in pod["volumes"] if v["name"] == "secrets")["projected"][
        "sources"
    ]
    secret = next(o for o in objects if o["kind"] == "Secret")

    assert {
        "secret": {
            "name": "gitlab-bot-token",
            "items": [{"key": "token", "path": "gitlab-token"}],
        }
    } in sources
    assert {
        "secret": {
            "name": "gitlab-oauth",
            "items": [{"key": "client-id", "path": "oauth-client-id"}],
        }
    } in sources
    assert "gitlab-token" not in secret["data"]
    assert set(secret["data"]) == {
        "webhook-secret",
        "webhook-signing-secret",
        "session-secret",
        "database-url",
    }


def test_config_map_sets_the_kubernetes_runtime() -> None:
    objects = chart_objects(full_values())
    data = next(o for o in objects if o["kind"] == "ConfigMap")["data"]

    assert data["RWBOT_RUNTIME"] == "kubernetes"
    assert data["RWBOT_LOG_FORMAT"] == "json"
    assert data["RWBOT_GITLAB_URL"] == "https://gitlab.internal.example"
    assert data["RWBOT_WORKSPACE_IMAGE"] == "registry.example.com/review-workspace:2025"
    assert data["RWBOT_K8S_HOST_USERS"] == "false"
    assert data["RWBOT_K8S_BOT_NAMESPACE"] == "bots"
    assert data["RWBOT_K8S_GITLAB_CIDRS"] == "10.20.0.0/16"
    assert data["RWBOT_WORKSPACE_MEMORY"] == "4g"


def test_notes_give_the_webhook_url_and_oauth_redirect_uri() -> None:
    text = notes(full_values())

    assert "https://workspaces.example.com/webhooks/gitlab" in text
    assert "https://workspaces.example.com/auth/callback" in text
    assert "WARNING" not in text
    assert "WARNING: secrets.gitlabToken is not set" in notes({})


def image_command() -> list[str]:
    """The Dockerfile's CMD (exec form), continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("CMD ")]
    return list(json.loads(line.removeprefix("CMD ")))


@pytest.mark.parametrize("which", ["default", "full"])
def test_web_runs_the_images_own_command_tuned_through_gunicorns_variable(
    which: str,
) -> None:
    values = {} if which == "default" else full_values()
    objects = chart_objects(values)
    web = next(
        c for pod in pod_specs(objects) for c in pod["containers"] if c["name"] == "web"
    )
    env = {e["name"]: e.get("value") for e in web["env"]}
    command = image_command()

    assert "command" not in web and "args" not in web
    assert command[0] == "gunicorn" and "--no-control-socket" in command
    # As gunicorn reads it: the variable first, then the image's arguments.
    parsed = (
        gunicorn_config.Config()
        .parser()
        .parse_args([*shlex.split(env["GUNICORN_CMD_ARGS"] or ""), *command[1:]])
    )
    wanted = yaml.safe_load((CHART / "values.yaml").read_text())["web"]
    wanted.update(values.get("web", {}))
    assert parsed.bind == [f"0.0.0.0:{wanted['port']}"]
    assert parsed.workers == wanted["gunicorn"]["workers"]
    assert parsed.threads == wanted["gunicorn"]["threads"]
    assert parsed.worker_class == "gthread"
    assert parsed.control_socket_disable is True
    assert parsed.args == ["bot.app:create_app()"]


def test_templates_config_map_is_mounted_where_rwbot_k8s_templates_points() -> None:
    objects = chart_objects(full_values())
    data = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    default = chart_objects({})

    for pod in pod_specs(objects):
        assert {
            "name": "workspace-templates",
            "configMap": {"name": "rwbot-workspace-templates"},
        } in pod["volumes"]
        for container in pod["containers"]:
            assert {
                "name": "workspace-templates",
                "mountPath": data["RWBOT_K8S_TEMPLATES"],
                "readOnly": True,
            } in container["volumeMounts"]
    assert (
        "RWBOT_K8S_TEMPLATES"
        not in next(o for o in default if o["kind"] == "ConfigMap")["data"]
    )
    for pod in pod_specs(default):
        assert "workspace-templates" not in [v["name"] for v in pod["volumes"]]


def bot_env(values: Obj, tmp_path: Path) -> dict[str, str]:
    """The web container's environment as the kubelet would build it: the
    ConfigMap, literal values, Secret references resolved, and the files the
    ``*_FILE`` variables name written under ``tmp_path`` (the chart's own
    Secret's value, or a placeholder for an existing Secret's)."""
    objects = chart_objects(values)
    data = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    secret = {
        key: base64.b64decode(value).decode()
        for key, value in next(o for o in objects if o["kind"] == "Secret")[
            "data"
        ].items()
    }
    web = next(
        c for pod in pod_specs(objects) for c in pod["containers"] if c["name"] == "web"
    )
    (tmp_path / "secrets").mkdir()
    (tmp_path / "templates").mkdir()

    env = dict(data)
    for item in web["env"]:
        if "valueFrom" in item:
            env[item["name"]] = secret[item["valueFrom"]["secretKeyRef"]["key"]]
            continue
        value = item["value"]
        if value.startswith("/run/secrets/rwbot/"):
            name = value.rsplit("/", 1)[1]
            path = tmp_path / "secrets" / name
            path.write_text(secret.get(name, f"from-an-existing-secret-{name}"))
            value = str(path)
        env[item["name"]] = value
    if "RWBOT_K8S_TEMPLATES" in env:
        env["RWBOT_K8S_TEMPLATES"] = str(tmp_path / "templates")
    return env


MINIMAL_INSTALL: Obj = {
    "secrets": {
        "gitlabToken": {"value": "glpat-placeholder"},
        "webhookSecret": {"value": "a-webhook-secret"},
    }
}


def test_the_charts_default_configuration_parses_as_the_runtimes_defaults(
    tmp_path: Path,
) -> None:
    env = bot_env(MINIMAL_INSTALL, tmp_path)

    bot = settings.from_env(env)
    kube = kube_config.config_from_env(env)

    assert bot.runtime == "kubernetes"
    assert bot.gitlab_token == "glpat-placeholder"
    assert bot.database_url == "sqlite:////data/rwbot.db"
    assert bot.public_url == "https://review-workspaces.example.com"
    assert bot.endpoints_domain == ""
    assert kube.bot_namespace == "bots"
    assert kube.bot_pod_labels == (
        ("app.kubernetes.io/name", "review-workspace-bot"),
        ("app.kubernetes.io/instance", "rwbot"),
    )
    # Everything else the chart sets is what the runtime assumes anyway.
    assert (
        dataclasses.replace(
            kube, bot_namespace="", bot_pod_labels=KubernetesConfig().bot_pod_labels
        )
        == KubernetesConfig()
    )


def test_the_charts_full_configuration_parses_with_the_bots_own_parsers(
    tmp_path: Path,
) -> None:
    env = bot_env(full_values(), tmp_path)

    bot = settings.from_env(env)
    kube = kube_config.config_from_env(env)

    assert bot.runtime == "kubernetes"
    assert bot.gitlab_token == "from-an-existing-secret-gitlab-token"
    assert bot.webhook_signing_secret == "whsec_c2lnbmluZw=="
    assert bot.database_url.startswith("postgresql+psycopg://")
    assert bot.endpoints_domain == "preview.example.net"
    assert (bot.start_drafts, bot.resync_interval) == (False, 120.0)
    assert (bot.workspace_memory, bot.workspace_cpus) == ("4g", 2.0)
    assert bot.projects == ("group/app", "42")
    assert kube.namespace_prefix == "rw-"
    assert kube.egress == "allowlist"
    assert kube.egress_allow == ("10.20.0.0/16", "192.0.2.0/24", "2001:db8::/32")
    assert kube.host_users is False
    assert kube.image_pull_secrets == ("workspace-registry",)
    assert kube.dns_namespace == "dns-system"
    assert kube.dns_pod_labels == (
        ("app.kubernetes.io/name", "coredns"),
        ("tier", "dns"),
    )
    assert kube.dns_cidrs == ("169.254.20.10/32",)
    assert kube.ready_timeout == 600.0
    assert kube.templates == tmp_path / "templates"


@pytest.mark.parametrize(
    ("domain", "refused"),
    [
        ("workspaces.example.com", True),
        ("example.com", True),
        ("preview.example.com", False),
        ("preview.workspaces.example.com", False),
    ],
)
def test_chart_refuses_an_endpoints_domain_exactly_when_the_bot_would(
    domain: str, refused: bool, tmp_path: Path
) -> None:
    values = full_values()
    values["publicUrl"] = "https://Workspaces.Example.com:8443/"
    values["endpoints"]["domain"] = domain

    if refused:
        with pytest.raises(
            helm.errors.HelmRenderError,
            match=f"endpoints.domain {domain} holds the bot's own host "
            "workspaces.example.com",
        ):
            chart_objects(values)
        values["endpoints"]["domain"] = "preview.example.net"
        env = bot_env(values, tmp_path)
        env["RWBOT_ENDPOINTS_DOMAIN"] = domain
        with pytest.raises(ConfigError, match="ENDPOINTS_DOMAIN"):
            settings.from_env(env)
        return

    assert settings.from_env(bot_env(values, tmp_path)).endpoints_domain == domain


def test_notes_warn_when_the_ingress_has_tls_but_the_wildcard_host_has_none() -> None:
    values = full_values()
    values["endpoints"]["tlsSecretName"] = ""

    text = notes(values)

    assert (
        "WARNING: the Ingress has TLS for workspaces.example.com but none for "
        "*.preview.example.net" in text
    )
    assert "Set endpoints.tlsSecretName" in text


def test_notes_name_no_secret_when_the_chart_makes_no_ingress() -> None:
    values = full_values()
    values["ingress"]["enabled"] = False

    text = notes(values)

    assert "certificate for *.preview.example.net,\n    wherever TLS is" in text
    assert "preview-wildcard-tls" not in text
    assert "WARNING" not in text


def without_endpoints() -> Obj:
    values = full_values()
    del values["endpoints"]
    return values


def test_endpoints_domain_sets_the_variable_and_routes_its_wildcard_host() -> None:
    objects = chart_objects(full_values())
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    web = next(o for o in objects if o["metadata"]["name"] == "rwbot-web")
    (ingress,) = [o for o in objects if o["kind"] == "Ingress"]

    assert config["data"]["RWBOT_ENDPOINTS_DOMAIN"] == "preview.example.net"
    container = web["spec"]["template"]["spec"]["containers"][0]
    assert {"configMapRef": {"name": config["metadata"]["name"]}} in container[
        "envFrom"
    ]
    rules = {rule["host"]: rule for rule in ingress["spec"]["rules"]}
    assert set(rules) == {"workspaces.example.com", "*.preview.example.net"}
    assert rules["*.preview.example.net"]["http"]["paths"] == [
        {
            "path": "/",
            "pathType": "Prefix",
            "backend": {"service": {"name": "rwbot", "port": {"name": "http"}}},
        }
    ]
    assert {
        "hosts": ["*.preview.example.net"],
        "secretName": "preview-wildcard-tls",
    } in ingress["spec"]["tls"]
    text = notes(full_values())
    assert "wildcard DNS record *.preview.example.net" in text
    assert "certificate for *.preview.example.net" in text


@pytest.mark.parametrize("values", [{}, without_endpoints()], ids=["default", "full"])
def test_without_an_endpoints_domain_there_is_no_variable_and_no_wildcard(
    values: Obj,
) -> None:
    objects = chart_objects(values)
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]

    assert "RWBOT_ENDPOINTS_DOMAIN" not in config
    for ingress in (o for o in objects if o["kind"] == "Ingress"):
        assert [r["host"] for r in ingress["spec"]["rules"]] == [
            "workspaces.example.com"
        ]
        assert [t["hosts"] for t in ingress["spec"]["tls"]] == [
            ["workspaces.example.com"]
        ]
    assert "*." not in notes(values)


@pytest.mark.parametrize("which", ["default", "full"])
def test_web_pods_carry_the_labels_workspace_policies_admit(which: str) -> None:
    """Workspaces' NetworkPolicies admit pods matching RWBOT_K8S_BOT_POD_LABELS
    in RWBOT_K8S_BOT_NAMESPACE; the web pods, which proxy endpoints, must."""
    objects = chart_objects({} if which == "default" else full_values())
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    web = next(
        o
        for o in objects
        if o["kind"] == "Deployment"
        and "web" in [c["name"] for c in o["spec"]["template"]["spec"]["containers"]]
    )

    labels = web["spec"]["template"]["metadata"]["labels"]
    wanted = dict(
        p.split("=", 1) for p in config["RWBOT_K8S_BOT_POD_LABELS"].split(",")
    )
    assert wanted.items() <= labels.items()
    assert config["RWBOT_K8S_BOT_NAMESPACE"] == "bots"


def test_the_endpoints_domain_must_be_a_lower_case_dns_name() -> None:
    for bad in ("Preview.Example.net", "bad_name.example", "a..b", "-a.b", "*.x.y"):
        with pytest.raises(helm.errors.HelmValuesError, match="endpoints/domain"):
            chart_objects({"endpoints": {"domain": bad}})


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"web": {"replicas": "3"}}, "web/replicas"),
        ({"web": {"port": 80}}, "web/port"),
        ({"worker": {"replicas": 1.5}}, "worker/replicas"),
        ({"workspaces": {"hostUsers": "false"}}, "workspaces/hostUsers"),
        ({"workspaces": {"egress": "everything"}}, "workspaces/egress"),
        ({"workspaces": {"gitlabCidrs": "10.0.0.0/8"}}, "workspaces/gitlabCidrs"),
        ({"workspaces": {"readyTimeout": "5m"}}, "workspaces/readyTimeout"),
        ({"workspaces": {"templatesConfigMap": "My Maps"}}, "templatesConfigMap"),
        ({"workspaces": {"dns": {"podLabels": "k8s-app"}}}, "dns/podLabels"),
        ({"workspaces": {"dns": {"cidrs": ["10.0.0.10"]}}}, "dns/cidrs"),
        ({"settings": {"resyncInterval": "5m"}}, "settings/resyncInterval"),
        ({"settings": {"startDrafts": "no"}}, "settings/startDrafts"),
        ({"ingress": {"enabled": "yes"}}, "ingress/enabled"),
        ({"image": {"pullPolicy": "always"}}, "image/pullPolicy"),
        ({"database": {"url": "mysql://db/rwbot"}}, "database/url"),
        ({"extraEnv": {"PATH": "/tmp"}}, "'PATH' does not match"),
        ({"publicUrl": "workspaces.example.com"}, "publicUrl"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_the_schema_refuses_wrong_types_and_values(values: Obj, where: str) -> None:
    with pytest.raises(helm.errors.HelmValuesError, match=where):
        chart_objects(values)


def readme_block(heading: str, lang: str) -> str:
    """The first ``lang`` code block after ``heading`` in the README."""
    text = README.read_text()
    start = text.index(f"```{lang}\n", text.index(heading)) + len(lang) + 4
    return text[start : text.index("```", start)]


def test_the_readmes_helm_values_render_and_validate() -> None:
    values = yaml.safe_load(readme_block("### Install on Kubernetes with Helm", "yaml"))

    objects = chart_objects(values)

    for version in VERSIONS:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)
    deployments = {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
    # The database comes from the Secret: web and worker scale apart.
    assert deployments == {
        "rwbot-review-workspace-bot-web",
        "rwbot-review-workspace-bot-worker",
    }
    assert "WARNING" not in notes(values)


def test_the_readme_documents_every_rwbot_k8s_variable() -> None:
    read = set(re.findall(r'\(env, "([A-Z_]+)"\)', inspect.getsource(kube_config)))
    documented = set()
    for line in README.read_text().splitlines():
        if line.startswith("| `RWBOT_K8S_"):
            for name in re.findall(r"`(RWBOT_K8S_|_)([A-Z_]+)`", line.split("|")[1]):
                documented.add(name[1])

    assert documented == read


# -- RBAC ------------------------------------------------------------------------------


def exercise_every_call(double: KubeDouble, rwctl: Path, gitlab: GitLabDouble) -> None:
    """A full lifecycle, including the paths that only retries and failures take."""
    source = kube_double.mr_source(gitlab)[0]
    runtime = KubernetesRuntime(
        kube_double.api_client(double),
        KubernetesConfig(rwctl=rwctl),
        "prod",
        clone_tokens=kube_double.clone_tokens(gitlab),
    )
    key = base.WorkspaceKey(7, 3)
    served = base.Spec(key, 2, "registry.example.com/ws:1", source)
    runtime.ping()

    double.fail_once("create", "apps", "deployments", 503)
    with pytest.raises(Exception, match="unavailable"):
        runtime.ensure_running(served)
    runtime.ensure_running(served)  # adopts (replaces) what the first attempt made
    wait_for(lambda: runtime.status(key).phase is base.Phase.RUNNING, 10, "running")
    runtime.exec(key, ["true"])
    with pytest.raises(PermanentError):
        runtime.endpoint(key, "web")  # this MR's workspace has no endpoints
    terminal = runtime.open_terminal(key, ["sh"], rows=24, cols=80)
    terminal.close()
    runtime.stop(key)
    runtime.ensure_running(served)
    list(runtime.list_ours())
    runtime.remove(key)

    double.behaviour = PodBehaviour.IMAGE_PULL
    runtime.ensure_running(served)
    assert runtime.status(key).phase is base.Phase.FAILED  # reads the events
    runtime.remove(key)


def chart_rules(values: Obj) -> set[tuple[str, str, str]]:
    (role,) = [o for o in chart_objects(values) if o["kind"] in ("ClusterRole", "Role")]
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_cluster_role_grants_exactly_what_the_runtime_uses(rwctl: Path) -> None:
    with GitLabDouble() as gitlab, KubeDouble().running() as double:
        exercise_every_call(double, rwctl, gitlab)

    assert double.rbac() == chart_rules({})
    assert chart_rules(full_values()) == chart_rules({})
