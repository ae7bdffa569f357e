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
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from bot import accounts, devfile
from bot.errors import PermanentError
from bot.runtime import base, workspace
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


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("which", ["default", "full", "devfile"])
def test_workspace_manifests_validate_strictly(
    rwctl: Path, which: str, version: str
) -> None:
    config = KubernetesConfig(rwctl=rwctl) if which != "full" else full_config(rwctl)
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

    for container in pod["initContainers"] + pod["containers"]:
        security = container["securityContext"]
        assert security["capabilities"] == {
            "drop": ["ALL"],
            "add": ["SETUID", "SETGID", "CHOWN", "FOWNER", "DAC_OVERRIDE", "KILL"],
        }
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
    assert egress[0]["ports"] == [
        {"protocol": "UDP", "port": 53},
        {"protocol": "TCP", "port": 53},
    ]


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
    assert (
        web["command"][0] == "gunicorn" and web["command"][-1] == "bot.app:create_app()"
    )
    assert "--bind=0.0.0.0:8080" in web["command"]
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


# -- RBAC ------------------------------------------------------------------------------


def exercise_every_call(double: KubeDouble, rwctl: Path, source: base.Source) -> None:
    """A full lifecycle, including the paths that only retries and failures take."""
    runtime = KubernetesRuntime(
        kube_double.api_client(double), KubernetesConfig(rwctl=rwctl), "prod"
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
        exercise_every_call(double, rwctl, kube_double.mr_source(gitlab)[0])

    assert double.rbac() == chart_rules({})
    assert chart_rules(full_values()) == chart_rules({})
