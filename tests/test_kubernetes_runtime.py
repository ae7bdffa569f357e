"""KubernetesRuntime against the API double, with the real ``kubernetes`` client.

Covers: create → ready → stop (replicas 0, volume kept) → start → remove
(namespace gone, idempotent); destroy then recreate of the same MR while the
old namespace is still Terminating; in a real container of the workspace image
(rootful Podman) standing in for the pod: the postStart hook's ``rwctl init``,
exec as a user, both streams and the exit code, a program that cannot start, a
reviewer provisioned with ``rwctl adduser`` whose TTY shell (``rwctl shell``,
as the bot's terminal opens it) is their own user and follows resizes, and is
ended with ``rwctl end``; pods that become ready later, never become ready
(ready timeout), cannot pull their image, fail to clone, crash or cannot be
scheduled; the clone credential: a read-only deploy token minted on the GitLab
double (never the bot's token), good for its own repository only, deleted and
revoked once the clone is done, when the clone fails, on a restart of an
unfinished clone (a fresh one) and on removal, and a bot without Maintainer
failing the workspace naming the role; a token a killed worker minted but
never recorded, revoked when the workspace is made, restarted or removed (a
token list GitLab refuses or fails to give is logged, and the workspace is made
all the same); never in the shell container, never in
.git/config (the clone script is run for real against the GitLab double's git
over HTTP with the credential handed out); 403, 404, 409, 5xx and connection
errors; generation
bumps; a namespace that is not ours; a lost store (the real resync removes the
orphan namespace and keeps the wanted one); ``config_from_env``.
Devfiles (read by the bot from the commit being run, served by the GitLab
double): image, env, limits and volumes in the Deployment, notes, an unusable
devfile or a commit gone from the MR making nothing, postStart commands run over
exec in the pod's container once the pod is ready and again in a new pod.
``sync`` sends a bundle through exec's stdin to a checkout the container shares
with the test: new commits arrive, local changes stop it with git's words.
User namespaces make joins ask for ``--uid auto``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import logging
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from kubernetes import client

from bot import accounts, git
from bot.devfile import DevfileError
from bot.errors import ConfigError, PermanentError, TemporaryError
from bot.gitlab import Client
from bot.reconciler import Reconciler
from bot.runtime import base, workspace
from bot.runtime.kube import credentials, manifests
from bot.runtime.kubernetes import KubernetesConfig, KubernetesRuntime, config_from_env
from bot.settings import SettingsError
from bot.store import Store
from tests import harness, kube_double, services
from tests.gitlab_double import DEVELOPER, GitLabDouble, deploy_tokens
from tests.kube_double import KubeDouble, PodBehaviour
from tests.services import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
RWCTL = ROOT / "bot" / "workspace" / "rwctl.sh"
KEY = base.WorkspaceKey(project_id=7, mr_iid=3)
NAMESPACE = "rwbot-test-p7-mr3"


def make_spec(
    source: base.Source, generation: int = 1, key: base.WorkspaceKey = KEY
) -> base.Spec:
    return base.Spec(key=key, generation=generation, image="ws:1", source=source)


@pytest.fixture(scope="module")
def gitlab() -> Iterator[GitLabDouble]:
    with GitLabDouble() as running:
        yield running


@pytest.fixture(scope="module")
def tokens(gitlab: GitLabDouble) -> Client:
    """The bot's GitLab client, which mints the workspaces' clone tokens."""
    client: Client = kube_double.clone_tokens(gitlab)
    return client


@pytest.fixture(scope="module")
def source(gitlab: GitLabDouble) -> base.Source:
    """An MR without a devfile, served by the GitLab double."""
    return kube_double.mr_source(gitlab)[0]


@pytest.fixture
def rwctl() -> Path:
    return RWCTL


@pytest.fixture
def double() -> Iterator[KubeDouble]:
    with KubeDouble().running() as running:
        yield running


@pytest.fixture(scope="module")
def pod_shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of this machine's that the pod's container sees at the same
    path, for checkouts the tests make and look at."""
    return tmp_path_factory.mktemp("pod-shared")


@pytest.fixture(scope="module")
def pod_container(pod_shared: Path) -> Iterator[str]:
    """A rootful Podman container of the workspace image that stands in for the
    workspace container of every pod of :func:`contained`: the capabilities and
    no-new-privileges of the Deployment's securityContext, no network, and
    rwctl where the ConfigMap puts it. One for the module, to keep it lean."""
    services.require_podman()
    services.import_image(services.ROOTFS_TAR, services.WORKSPACE_IMAGE)
    name = f"rwbot-kube-pod-{secrets.token_hex(4)}"
    services.podman(
        "run",
        "-d",
        "--name",
        name,
        "--network=none",
        "--cap-drop=ALL",
        *(f"--cap-add={c}" for c in manifests.CAPABILITIES),
        "--security-opt=no-new-privileges",
        "-v",
        f"{RWCTL}:{accounts.TOOL_PATH}:ro",
        "-v",
        f"{pod_shared}:{pod_shared}",
        services.WORKSPACE_IMAGE,
        "sleep",
        "infinity",
    )
    try:
        yield name
    finally:
        services.podman("rm", "-f", "-t", "0", name, check=False)


@pytest.fixture
def contained(pod_container: str) -> Iterator[KubeDouble]:
    """The double with its pods' exec (and postStart hook) in the container."""
    with KubeDouble(container=pod_container).running() as running:
        yield running


@pytest.fixture
def in_pod(
    contained: KubeDouble, config: KubernetesConfig, tokens: Client
) -> KubernetesRuntime:
    """A runtime whose workspace commands run in a real container."""
    return KubernetesRuntime(
        kube_double.api_client(contained), config, "test", clone_tokens=tokens
    )


@pytest.fixture
def config(rwctl: Path) -> KubernetesConfig:
    return KubernetesConfig(rwctl=rwctl, ready_timeout=60.0, exec_timeout=30.0)


@pytest.fixture
def runtime(
    double: KubeDouble, config: KubernetesConfig, tokens: Client
) -> KubernetesRuntime:
    return KubernetesRuntime(
        kube_double.api_client(double), config, "test", clone_tokens=tokens
    )


def phase_is(runtime: KubernetesRuntime, phase: base.Phase) -> base.Status | None:
    found = runtime.status(KEY)
    return found if found.phase is phase else None


def running(runtime: KubernetesRuntime, source: base.Source) -> None:
    runtime.ensure_running(make_spec(source))
    wait_for(lambda: phase_is(runtime, base.Phase.RUNNING), 10, "workspace running")


def read_until(terminal: base.Terminal, wanted: bytes) -> bytes:
    seen = b""

    def more() -> bool:
        nonlocal seen
        with contextlib.suppress(TimeoutError):
            seen += terminal.read(timeout=0.5)
        return wanted in seen

    wait_for(more, 10, f"{wanted!r} on the terminal")
    return seen


# -- lifecycle -------------------------------------------------------------------------


def test_create_makes_a_labelled_namespace_with_every_object(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    status = runtime.ensure_running(make_spec(source, generation=4))

    assert status == base.Status(base.Phase.STARTING, generation=4)
    labels = double.must("", "namespaces", "", NAMESPACE)["metadata"]["labels"]
    assert labels[base.MANAGED_BY] == base.MANAGED_BY_VALUE
    assert labels[base.LABEL_INSTANCE] == "test"
    assert (labels[base.LABEL_PROJECT], labels[base.LABEL_MR]) == ("7", "3")
    assert labels[base.LABEL_GENERATION] == "4"
    for group, resource, name in [
        ("", "configmaps", "rwbot-tools"),
        ("", "secrets", "clone-credential"),
        ("", "persistentvolumeclaims", "workspace-data"),
        ("networking.k8s.io", "networkpolicies", "workspace"),
        ("", "resourcequotas", "workspace"),
        ("", "limitranges", "workspace"),
        ("apps", "deployments", "workspace"),
    ]:
        found = double.get(group, resource, NAMESPACE, name)
        assert found is not None, resource
        assert found["metadata"]["labels"][base.LABEL_GENERATION] == "4"


def test_ready_workspace_runs_commands_as_the_given_user(
    in_pod: KubernetesRuntime, source: base.Source
) -> None:
    running(in_pod, source)

    result = in_pod.exec(KEY, ["id", "-un"], user="nobody")

    assert result == base.ExecResult(exit_code=0, output=b"nobody\n")
    assert in_pod.exec(KEY, ["id", "-un"]).output == b"root\n"


def test_exec_returns_both_streams_and_the_exit_code(
    in_pod: KubernetesRuntime, source: base.Source
) -> None:
    running(in_pod, source)

    result = in_pod.exec(KEY, ["sh", "-c", "echo out; echo err >&2; exit 3"])

    assert result.exit_code == 3
    assert sorted(result.output.splitlines()) == [b"err", b"out"]


def test_exec_of_a_missing_program_reports_cannot_execute(
    in_pod: KubernetesRuntime, source: base.Source
) -> None:
    running(in_pod, source)

    result = in_pod.exec(KEY, ["/nonexistent/tool"])

    assert result.exit_code == 126
    assert b"/nonexistent/tool" in result.output


def test_pod_is_prepared_by_its_post_start_hook_before_it_is_ready(
    in_pod: KubernetesRuntime, source: base.Source
) -> None:
    running(in_pod, source)
    checkout = make_spec(source).checkout_dir

    group = in_pod.exec(KEY, ["stat", "-c", "%G %a", checkout])

    assert group == base.ExecResult(0, f"{accounts.SHARED_GROUP} 2775\n".encode())


def test_provisioned_reviewer_gets_a_tty_shell_as_themselves_that_follows_resizes(
    in_pod: KubernetesRuntime, source: base.Source
) -> None:
    running(in_pod, source)
    name = f"rev{secrets.token_hex(3)}"
    added = in_pod.exec(
        KEY,
        accounts.adduser_argv(
            name=name,
            gitlab_user_id=4242,
            gitlab_username=name,
            role=accounts.Role.WRITE,
            git_name="A Reviewer",
            git_email=f"{name}@example.com",
            uid=in_pod.uid_policy,
        ),
    )
    assert added.exit_code == 0, added.output

    session = secrets.token_hex(16)
    terminal = in_pod.open_terminal(
        KEY, accounts.shell_argv(name, session=session), rows=24, cols=80
    )
    try:
        terminal.write(b"whoami; id -u\n")
        read_until(terminal, f"{name}\r\n{accounts.uid_for(4242)}\r\n".encode())

        shows_size(terminal, b"24 80")
        terminal.resize(rows=50, cols=160)
        shows_size(terminal, b"50 160")

        # The bot ends the shell of a closed tab as bot/terminal.py does.
        ended = in_pod.exec(KEY, accounts.end_argv(session))
        assert ended.exit_code == 0, ended.output
        wait_for(lambda: _drained(terminal), 10, "the shell to end")
    finally:
        terminal.close()


def shows_size(terminal: base.Terminal, size: bytes) -> None:
    """Ask the shell for its terminal's size until it is ``size``: a resize
    travels on to the container's terminal on its own time, as on a cluster."""
    seen = b""

    def shown() -> bool:
        nonlocal seen
        terminal.write(b"stty size\n")
        with contextlib.suppress(TimeoutError):
            seen += terminal.read(timeout=0.5)
        return size + b"\r\n" in seen

    wait_for(shown, 10, f"size {size!r} in the shell")


def _drained(terminal: base.Terminal) -> bool:
    try:
        return terminal.read(timeout=0.5) == b""
    except TimeoutError:
        return False


def test_stop_scales_to_zero_and_keeps_the_volume_then_start_brings_it_back(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    running(runtime, source)

    runtime.stop(KEY)

    deployment = double.must("apps", "deployments", NAMESPACE, "workspace")
    assert deployment["spec"]["replicas"] == 0
    assert double.items("", "pods", NAMESPACE) == []
    assert double.get("", "persistentvolumeclaims", NAMESPACE, "workspace-data")
    assert runtime.status(KEY) == base.Status(base.Phase.STOPPED, generation=1)

    runtime.ensure_running(make_spec(source))

    assert (
        double.must("apps", "deployments", NAMESPACE, "workspace")["spec"]["replicas"]
        == 1
    )
    wait_for(lambda: phase_is(runtime, base.Phase.RUNNING), 10, "restarted")
    # The clone had finished before: no new credential is handed out.
    assert double.get("", "secrets", NAMESPACE, "clone-credential") is None


def test_remove_deletes_the_namespace_and_may_be_repeated(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    running(runtime, source)

    runtime.remove(KEY)
    runtime.remove(KEY)

    assert double.get("", "namespaces", "", NAMESPACE) is None
    assert double.items("apps", "deployments", NAMESPACE) == []
    assert runtime.status(KEY) == base.Status(base.Phase.MISSING)
    runtime.stop(KEY)  # stopping what is gone is fine too


def test_ensure_running_on_a_running_workspace_changes_nothing(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    running(runtime, source)
    before = len(double.calls)

    assert runtime.ensure_running(make_spec(source)).phase is base.Phase.RUNNING
    writes = [c for c in double.calls[before:] if c.verb not in ("get", "list")]
    assert writes == []


def test_workspace_is_starting_until_its_pod_is_ready(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    double.behaviour = PodBehaviour.MANUAL
    runtime.ensure_running(make_spec(source))
    assert runtime.status(KEY).phase is base.Phase.STARTING

    double.make_ready(NAMESPACE)

    wait_for(lambda: phase_is(runtime, base.Phase.RUNNING), 10, "ready")


# -- the clone credential --------------------------------------------------------------


def handed_out(double: KubeDouble, namespace: str = NAMESPACE) -> tuple[str, str]:
    """The user name and token in the workspace's clone credential."""
    data = double.must("", "secrets", namespace, "clone-credential")["data"]
    return (
        base64.b64decode(data["username"]).decode(),
        base64.b64decode(data["token"]).decode(),
    )


def git_reads(source: base.Source, username: str, token: str) -> bool:
    """Whether git over HTTP lets these credentials read the repository."""
    answer = requests.get(
        f"{source.url}/info/refs",
        params={"service": "git-upload-pack"},
        auth=(username, token),
        timeout=10,
    )
    return answer.status_code == 200


def test_credential_is_a_read_only_deploy_token_revoked_once_the_clone_is_done(
    runtime: KubernetesRuntime,
    double: KubeDouble,
    gitlab: GitLabDouble,
    source: base.Source,
) -> None:
    double.behaviour = PodBehaviour.MANUAL
    runtime.ensure_running(make_spec(source))
    username, token = handed_out(double)
    (minted,) = [t for t in deploy_tokens.of(gitlab.store).values() if t.token == token]

    assert token != source.token  # never the bot's own token
    assert (minted.username, minted.scopes) == (username, ["read_repository"])
    assert minted.expires_at is not None
    assert minted.expires_at <= gitlab.store.now() + datetime.timedelta(hours=1)
    assert git_reads(source, username, token)
    runtime.status(KEY)  # still cloning: the credential stays
    assert double.get("", "secrets", NAMESPACE, "clone-credential") is not None

    double.make_ready(NAMESPACE)
    wait_for(lambda: phase_is(runtime, base.Phase.RUNNING), 10, "ready")

    assert double.get("", "secrets", NAMESPACE, "clone-credential") is None
    assert minted.id not in deploy_tokens.of(gitlab.store)
    assert not git_reads(source, username, token)
    deployment = double.must("apps", "deployments", NAMESPACE, "workspace")
    assert deployment["metadata"]["annotations"][manifests.CHECKOUT] == "done"


def test_clone_token_reads_its_own_repository_and_nothing_else(
    runtime: KubernetesRuntime,
    double: KubeDouble,
    gitlab: GitLabDouble,
    source: base.Source,
) -> None:
    other, _ = kube_double.mr_source(gitlab, f"team/other-{secrets.token_hex(3)}")
    double.behaviour = PodBehaviour.MANUAL
    runtime.ensure_running(make_spec(source))
    username, token = handed_out(double)

    push = requests.get(
        f"{source.url}/info/refs",
        params={"service": "git-receive-pack"},
        auth=(username, token),
        timeout=10,
    )
    api = requests.get(
        f"{gitlab.url}/api/v4/projects/{source.path.replace('/', '%2F')}",
        headers={"PRIVATE-TOKEN": token},
        timeout=10,
    )

    assert git_reads(source, username, token)
    assert not git_reads(other, username, token)
    assert push.status_code == 401
    assert api.status_code == 401


def test_credential_is_deleted_and_revoked_when_the_clone_fails(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    double.behaviour = PodBehaviour.CLONE_FAILED
    runtime.ensure_running(make_spec(source))
    username, token = handed_out(double)

    assert runtime.status(KEY).phase is base.Phase.FAILED

    assert double.get("", "secrets", NAMESPACE, "clone-credential") is None
    assert not git_reads(source, username, token)
    assert runtime.status(KEY).phase is base.Phase.FAILED  # and stays so


def test_restart_of_an_unfinished_clone_hands_a_fresh_token_and_revokes_the_old(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    double.behaviour = PodBehaviour.MANUAL
    runtime.ensure_running(make_spec(source))
    first = handed_out(double)
    runtime.stop(KEY)

    runtime.ensure_running(make_spec(source))

    second = handed_out(double)
    assert second != first
    assert git_reads(source, *second)
    assert not git_reads(source, *first)

    runtime.remove(KEY)  # destroyed before the clone finished: revoked too
    assert not git_reads(source, *second)


def left_by_a_killed_worker(
    tokens: Client, source: base.Source, namespace: str = NAMESPACE
) -> int:
    """The id of a clone token minted for ``namespace`` as the runtime mints
    one, by a worker killed before it recorded the token in the Deployment."""
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    name = credentials.token_name(namespace)
    return tokens.create_clone_token(
        source.path, name, expires.replace(microsecond=0)
    ).id


def test_tokens_killed_workers_left_are_revoked_when_a_workspace_is_made_or_started(
    runtime: KubernetesRuntime,
    double: KubeDouble,
    gitlab: GitLabDouble,
    tokens: Client,
    source: base.Source,
) -> None:
    double.behaviour = PodBehaviour.MANUAL
    before_made = left_by_a_killed_worker(tokens, source)
    runtime.ensure_running(make_spec(source))
    assert before_made not in deploy_tokens.of(gitlab.store)
    first = handed_out(double)
    runtime.stop(KEY)
    before_started = left_by_a_killed_worker(tokens, source)

    runtime.ensure_running(make_spec(source))

    assert before_started not in deploy_tokens.of(gitlab.store)
    assert not git_reads(source, *first)
    second = handed_out(double)
    runtime.status(KEY)  # still cloning: the new token stays
    assert git_reads(source, *second)
    double.make_ready(NAMESPACE)
    wait_for(lambda: phase_is(runtime, base.Phase.RUNNING), 10, "ready")
    assert not git_reads(source, *second)


def test_removal_revokes_every_token_of_the_workspaces_name(
    runtime: KubernetesRuntime,
    double: KubeDouble,
    gitlab: GitLabDouble,
    tokens: Client,
) -> None:
    # The tokens are looked for in the key's project: here it is the source's.
    source, mr = kube_double.mr_source(gitlab, f"team/gone-{secrets.token_hex(3)}")
    key = base.WorkspaceKey(mr["project_id"], mr["iid"])
    namespace = f"rwbot-test-{key.slug()}"
    double.behaviour = PodBehaviour.MANUAL
    runtime.ensure_running(make_spec(source, key=key))
    handed = handed_out(double, namespace)
    left = left_by_a_killed_worker(tokens, source, namespace)

    runtime.remove(key)

    assert double.get("", "namespaces", "", namespace) is None
    assert left not in deploy_tokens.of(gitlab.store)
    assert not git_reads(source, *handed)


@pytest.mark.parametrize("status", [403, 503])
def test_token_list_gitlab_refuses_is_logged_and_the_workspace_made_all_the_same(
    runtime: KubernetesRuntime,
    double: KubeDouble,
    gitlab: GitLabDouble,
    tokens: Client,
    source: base.Source,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    left = left_by_a_killed_worker(tokens, source)
    double.behaviour = PodBehaviour.MANUAL
    gitlab.inject_faults(status, every=1, times=1, paths=r"/deploy_tokens$")
    try:
        with caplog.at_level(logging.WARNING, "bot.runtime.kube.credentials"):
            runtime.ensure_running(make_spec(source))
    finally:
        gitlab.clear_faults()

    assert [r.message for r in caplog.records] == ["clone tokens not listed"]
    assert git_reads(source, *handed_out(double))
    assert left in deploy_tokens.of(gitlab.store)  # it still expires


def test_without_maintainer_the_workspace_fails_naming_the_role_and_makes_nothing(
    runtime: KubernetesRuntime, double: KubeDouble, gitlab: GitLabDouble
) -> None:
    project = gitlab.add_project("team/dev-only", bot_access=DEVELOPER)
    mr = gitlab.open_mr(project, "feature/y", {"a.txt": "a\n"})
    source = base.Source(
        gitlab.git_url(project),
        f"refs/merge-requests/{mr['iid']}/head",
        mr["sha"],
        "team/dev-only",
        gitlab.token,
    )

    with pytest.raises(PermanentError, match="needs the Maintainer role"):
        runtime.ensure_running(make_spec(source))
    assert double.items("", "namespaces") == []


def test_credential_is_mounted_in_the_clone_step_only(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    runtime.ensure_running(make_spec(source))
    pod = double.must("apps", "deployments", NAMESPACE, "workspace")["spec"]["template"]
    (shell,) = pod["spec"]["containers"]
    (clone,) = pod["spec"]["initContainers"]
    credential_volumes = {v["name"] for v in pod["spec"]["volumes"] if "secret" in v}

    assert credential_volumes == {"credential"}
    assert "credential" in {m["name"] for m in clone["volumeMounts"]}
    assert "credential" not in {m["name"] for m in shell["volumeMounts"]}
    assert "envFrom" not in shell and "env" not in shell
    assert source.token not in str(pod)


def _git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_clone_script_fetches_with_the_deploy_token_and_leaves_it_nowhere(
    runtime: KubernetesRuntime,
    double: KubeDouble,
    source: base.Source,
    tmp_path: Path,
) -> None:
    """The clone step as the pod runs it (clone.sh with askpass and the
    credential mounted as files), against the GitLab double's git over HTTP."""
    double.behaviour = PodBehaviour.MANUAL
    runtime.ensure_running(make_spec(source))
    username, token = handed_out(double)
    mounted = tmp_path / "credential"
    mounted.mkdir()
    (mounted / "username").write_text(username)
    (mounted / "token").write_text(token)
    dest = tmp_path / "workspace" / "group" / "app"
    templates = ROOT / "templates" / "kubernetes"
    askpass = tmp_path / "askpass"  # executable, as the ConfigMap mounts it
    askpass.write_bytes((templates / "askpass.sh").read_bytes())
    askpass.chmod(0o700)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "RWBOT_SOURCE_URL": source.url,
        "RWBOT_SOURCE_REF": source.ref,
        "RWBOT_SOURCE_SHA": source.sha,
        "RWBOT_CHECKOUT_DIR": str(dest),
        "RWBOT_CREDENTIAL_FILE": str(mounted / "token"),
        "GIT_ASKPASS": str(askpass),
        "GIT_TERMINAL_PROMPT": "0",
    }

    def clone(**changes: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(templates / "clone.sh")],
            env={**env, **changes},
            capture_output=True,
            text=True,
        )

    done = clone()
    again = clone()
    stale = clone(RWBOT_SOURCE_SHA="f" * 40, RWBOT_CHECKOUT_DIR=str(tmp_path / "o"))

    assert done.returncode == 0, done.stderr
    assert stale.returncode == 1
    assert stale.stderr == f"commit {'f' * 40} is no longer part of the merge request\n"
    assert not (tmp_path / "o").exists()

    assert (dest / "app.py").read_text() == "print(1)\n"
    assert _git("rev-parse", "HEAD", cwd=dest) == source.sha
    # The layout of bot.git.fetch_checkout, which the Docker runtime uses.
    assert _git("rev-parse", "--abbrev-ref", "HEAD", cwd=dest) == "review"
    assert _git("rev-parse", "refs/remotes/origin/mr-head", cwd=dest) == source.sha
    assert _git("config", "core.sharedRepository", cwd=dest) == "group"
    assert _git("config", "remote.origin.url", cwd=dest) == source.url
    leaked = subprocess.run(["grep", "-rl", token, str(dest)], capture_output=True)
    assert leaked.stdout == b""
    assert "already present" in again.stdout


# -- devfiles -------------------------------------------------------------------------

DEVFILE = """\
schemaVersion: 2.2.0
components:
  - name: tools
    attributes:
      gl/inject-editor: true
    container:
      image: registry.example.com/node:22
      memoryLimit: 1Gi
      cpuRequest: 500m
      env:
        - {name: NODE_ENV, value: development}
      endpoints:
        - {name: web, targetPort: 3000}
      volumeMounts:
        - {name: cache, path: /cache}
        - {name: scratch, path: /scratch}
  - {name: cache, volume: {}}
  - {name: scratch, volume: {ephemeral: true, size: 1Gi}}
"""


def workspace_pod(double: KubeDouble) -> dict[str, Any]:
    deployment = double.must("apps", "deployments", NAMESPACE, "workspace")
    return dict(deployment["spec"]["template"]["spec"])


def test_devfile_in_the_commit_shapes_the_workspace_container_also_after_a_restart(
    runtime: KubernetesRuntime, double: KubeDouble, gitlab: GitLabDouble
) -> None:
    source, _ = kube_double.mr_source(gitlab, "team/node", {".devfile.yaml": DEVFILE})

    status = runtime.ensure_running(make_spec(source))

    pod = workspace_pod(double)
    (shell,) = pod["containers"]
    (clone,) = pod["initContainers"]
    assert shell["image"] == "registry.example.com/node:22"
    assert clone["image"] == "ws:1"  # the clone step needs the admin's git
    assert shell["env"] == [{"name": "NODE_ENV", "value": "development"}]
    assert shell["resources"]["limits"]["memory"] == "1Gi"
    assert shell["resources"]["requests"] == {"cpu": "500m", "memory": "512Mi"}
    limit_range = double.must("", "limitranges", NAMESPACE, "workspace")
    assert limit_range["spec"]["limits"][0]["max"]["memory"] == "1Gi"
    mounts = {m["mountPath"]: m for m in shell["volumeMounts"]}
    assert mounts["/cache"] == {
        "name": "data",
        "mountPath": "/cache",
        "subPath": "devfile/cache",
    }
    scratch = next(v for v in pod["volumes"] if v["name"] == mounts["/scratch"]["name"])
    assert scratch["emptyDir"] == {"sizeLimit": "1Gi"}
    assert status.notes == ("rwbot-endpoint:web",)

    runtime.stop(KEY)
    runtime.ensure_running(make_spec(source))  # re-applies the limit range

    limit_range = double.must("", "limitranges", NAMESPACE, "workspace")
    assert limit_range["spec"]["limits"][0]["max"]["memory"] == "1Gi"
    assert limit_range["spec"]["limits"][0]["defaultRequest"]["cpu"] == "500m"


def test_an_endpoint_is_found_at_the_ready_pods_ip_and_not_while_stopped(
    runtime: KubernetesRuntime, double: KubeDouble, gitlab: GitLabDouble
) -> None:
    source, _ = kube_double.mr_source(gitlab, "team/web", {".devfile.yaml": DEVFILE})
    runtime.ensure_running(make_spec(source))
    wait_for(lambda: phase_is(runtime, base.Phase.RUNNING), 10, "workspace running")
    (pod,) = double.items("", "pods", NAMESPACE)

    target = runtime.endpoint(KEY, "web")

    assert target == base.EndpointTarget(pod["status"]["podIP"], 3000, "/")
    with pytest.raises(PermanentError, match="no endpoint named 'api'"):
        runtime.endpoint(KEY, "api")
    runtime.stop(KEY)
    with pytest.raises(PermanentError, match="not running"):
        runtime.endpoint(KEY, "web")


def test_devfile_is_read_at_the_commit_being_run_not_a_newer_head(
    runtime: KubernetesRuntime, double: KubeDouble, gitlab: GitLabDouble
) -> None:
    source, mr = kube_double.mr_source(gitlab, "team/fork", {".devfile.yaml": DEVFILE})
    gitlab.push(mr, {".devfile.yaml": DEVFILE.replace("node:22", "evil:1")})

    runtime.ensure_running(make_spec(source))  # source.sha: the approved commit

    (shell,) = workspace_pod(double)["containers"]
    assert shell["image"] == "registry.example.com/node:22"


def test_without_a_devfile_the_admins_image_and_limits_apply(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    status = runtime.ensure_running(make_spec(source))

    (shell,) = workspace_pod(double)["containers"]
    assert shell["image"] == "ws:1"
    assert shell["resources"]["limits"]["memory"] == "2Gi"
    assert status.notes == ()


def test_unusable_devfile_fails_the_workspace_before_anything_is_made(
    runtime: KubernetesRuntime, double: KubeDouble, gitlab: GitLabDouble
) -> None:
    source, _ = kube_double.mr_source(
        gitlab, "team/bad", {".devfile.yaml": DEVFILE.replace("1Gi", "64Gi", 1)}
    )
    spec = dataclasses.replace(
        make_spec(source), devfile=workspace.DevfilePolicy(max_memory="8Gi")
    )

    with pytest.raises(DevfileError, match="64Gi is more than this bot allows"):
        runtime.ensure_running(spec)
    assert double.items("", "namespaces") == []


def test_commit_no_longer_in_the_merge_request_is_refused(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    gone = dataclasses.replace(source, sha="f" * 40)

    with pytest.raises(PermanentError, match="no longer part of the merge request"):
        runtime.ensure_running(make_spec(gone))
    assert double.items("", "namespaces") == []


POST_START_DEVFILE = """\
schemaVersion: 2.2.0
components:
  - name: tools
    container: {image: registry.example.com/node:22}
commands:
  - id: install
    exec:
      component: tools
      commandLine: echo "installed in $(pwd) by $(id -un)" >> started
  - id: broken
    exec: {component: tools, commandLine: exit 3}
events:
  postStart: [install, broken]
"""


def test_post_start_commands_run_over_exec_once_the_pod_is_ready_in_every_pod(
    in_pod: KubernetesRuntime, contained: KubeDouble, gitlab: GitLabDouble
) -> None:
    files = {".devfile.yaml": POST_START_DEVFILE}
    source, _ = kube_double.mr_source(gitlab, "team/ps", files)
    checkout = make_spec(source).checkout_dir  # the commands' default directory
    log = workspace.POST_START_LOG
    contained.behaviour = PodBehaviour.MANUAL
    in_pod.ensure_running(make_spec(source))
    contained.make_ready(NAMESPACE)

    # Ready, but not prepared until ensure_running has run the commands.
    assert in_pod.status(KEY).phase is base.Phase.STARTING
    done = in_pod.ensure_running(make_spec(source))

    assert done.phase is base.Phase.RUNNING
    assert done.notes == (
        f"postStart command broken failed (exit 3); its output is in {log}",
        f"Ran 2 postStart command(s); output in {log}",
    )
    started = in_pod.exec(KEY, ["cat", f"{checkout}/started"])
    installed = f"installed in {checkout} by rwbot-devfile\n"
    assert started == base.ExecResult(0, installed.encode())
    written = in_pod.exec(KEY, ["cat", log]).output
    assert written.startswith(
        b'== echo "installed in $(pwd) by $(id -un)" >> started\n'
    )
    assert in_pod.status(KEY).phase is base.Phase.RUNNING
    assert in_pod.ensure_running(make_spec(source)).phase is base.Phase.RUNNING

    # A new pod has a new root filesystem: the commands run again there.
    in_pod.stop(KEY)
    contained.behaviour = PodBehaviour.READY
    in_pod.ensure_running(make_spec(source))
    assert in_pod.status(KEY).phase is base.Phase.STARTING
    assert in_pod.ensure_running(make_spec(source)).phase is base.Phase.RUNNING
    again = in_pod.exec(KEY, ["cat", f"{checkout}/started"]).output
    assert again.count(b"installed") == 2


# -- sync ------------------------------------------------------------------------------


@pytest.fixture
def checkout(
    in_pod: KubernetesRuntime, gitlab: GitLabDouble, pod_shared: Path
) -> tuple[base.Source, dict[str, object], Path]:
    """A running workspace whose checkout was cloned the way the clone step
    does it, where both this test and the pod's container see it."""
    name = secrets.token_hex(4)
    source, mr = kube_double.mr_source(gitlab, f"team/sync-{name}")
    dest = pod_shared / f"checkout-{name}"
    git.fetch_checkout(source.url, source.ref, source.sha, source.token, dest)
    running(in_pod, source)
    return source, mr, dest


def test_sync_brings_new_commits_through_exec_stdin(
    in_pod: KubernetesRuntime,
    gitlab: GitLabDouble,
    checkout: tuple[base.Source, dict[str, object], Path],
) -> None:
    source, mr, dest = checkout
    (dest / "notes.txt").write_text("mine\n")  # untracked: left alone
    new = gitlab.push(mr, {"lib.py": "v2\n"})

    result = in_pod.sync(KEY, dataclasses.replace(source, sha=new), str(dest))

    assert result == base.ExecResult(0, b"")
    assert (dest / "lib.py").read_text() == "v2\n"
    assert _git("rev-parse", "HEAD", cwd=dest) == new
    assert (dest / "notes.txt").read_text() == "mine\n"
    left = in_pod.exec(KEY, ["find", "/tmp", "-name", "rwbot-sync.*"])
    assert left == base.ExecResult(0, b"")


def test_sync_that_would_touch_local_changes_changes_nothing_and_says_why(
    in_pod: KubernetesRuntime,
    gitlab: GitLabDouble,
    checkout: tuple[base.Source, dict[str, object], Path],
) -> None:
    source, mr, dest = checkout
    (dest / "app.py").write_text("local\n")
    new = gitlab.push(mr, {"app.py": "v2\n"})

    result = in_pod.sync(KEY, dataclasses.replace(source, sha=new), str(dest))

    assert result.exit_code != 0
    assert b"Your local changes to the following files would be overwritten" in (
        result.output
    )
    assert (dest / "app.py").read_text() == "local\n"
    assert _git("rev-parse", "HEAD", cwd=dest) == source.sha


# -- uids ------------------------------------------------------------------------------


def test_user_namespaces_make_joins_ask_the_tool_for_a_uid(
    double: KubeDouble, config: KubernetesConfig, tokens: Client
) -> None:
    isolated = dataclasses.replace(config, host_users=False)

    def policy(c: KubernetesConfig) -> str:
        made = KubernetesRuntime(
            kube_double.api_client(double), c, "t", clone_tokens=tokens
        )
        return made.uid_policy

    assert (policy(config), policy(isolated)) == ("gitlab-id", "auto")


# -- failures --------------------------------------------------------------------------


def test_pod_that_never_becomes_ready_fails_after_the_timeout(
    double: KubeDouble, config: KubernetesConfig, source: base.Source, tokens: Client
) -> None:
    quick = KubernetesConfig(rwctl=config.rwctl, ready_timeout=0.3)
    runtime = KubernetesRuntime(
        kube_double.api_client(double), quick, "test", clone_tokens=tokens
    )
    double.behaviour = PodBehaviour.NEVER_READY
    runtime.ensure_running(make_spec(source))

    failed = wait_for(lambda: phase_is(runtime, base.Phase.FAILED), 10, "timeout")

    assert isinstance(failed, base.Status)
    assert failed.reason == (
        "the workspace did not become ready within 0.3 s: "
        "Readiness probe failed: checkout missing"
    )


def test_unschedulable_pod_is_starting_until_the_timeout_then_failed(
    double: KubeDouble, config: KubernetesConfig, source: base.Source, tokens: Client
) -> None:
    now = [1_000.0]
    runtime = KubernetesRuntime(
        kube_double.api_client(double),
        config,
        "test",
        clone_tokens=tokens,
        clock=lambda: now[0],
    )
    double.behaviour = PodBehaviour.UNSCHEDULABLE
    runtime.ensure_running(make_spec(source))
    now[0] += config.ready_timeout
    assert runtime.status(KEY).phase is base.Phase.STARTING

    now[0] += 1
    failed = runtime.status(KEY)

    assert failed.phase is base.Phase.FAILED
    assert failed.reason == (
        "the workspace did not become ready within 60 s: "
        "cannot be scheduled: 0/3 nodes are available: 3 Insufficient memory."
    )


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (
            PodBehaviour.IMAGE_PULL,
            'the workspace image could not be pulled: Failed to pull image "ws:1": '
            'rpc error: code = NotFound desc = failed to resolve reference "ws:1": '
            "not found",
        ),
        (
            PodBehaviour.CLONE_FAILED,
            "cloning the merge request failed: fatal: couldn't find remote ref "
            "refs/heads/gone (exit code 128)",
        ),
        (
            PodBehaviour.POST_START_FAILED,
            "preparing the workspace failed: PostStartHook failed: command exited "
            "with 3: rwctl: group-taken: rwbot-write exists with gid 1000",
        ),
        (
            PodBehaviour.CRASH_LOOP,
            "the workspace container keeps crashing: sleep: not found (exit code 127)",
        ),
    ],
)
def test_pod_failures_fail_the_workspace_at_once_with_the_pods_words(
    runtime: KubernetesRuntime,
    double: KubeDouble,
    behaviour: PodBehaviour,
    reason: str,
    source: base.Source,
) -> None:
    double.behaviour = behaviour
    runtime.ensure_running(make_spec(source))

    assert runtime.status(KEY) == base.Status(base.Phase.FAILED, reason, generation=1)


def test_missing_permission_is_a_config_error_naming_it(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    double.deny("create", "apps", "deployments")

    with pytest.raises(
        ConfigError,
        match=r"may not create deployments\.apps in namespace "
        r"rwbot-test-p7-mr3; grant it in the bot's ClusterRole",
    ):
        runtime.ensure_running(make_spec(source))


def test_missing_exec_permission_is_a_config_error(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    running(runtime, source)
    double.deny("create", "", "pods/exec")

    with pytest.raises(ConfigError, match="may not create pods/exec"):
        runtime.exec(KEY, ["true"])


def test_server_error_is_temporary_and_the_retry_adopts_what_was_made(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    double.fail_once("create", "apps", "deployments", 503)
    with pytest.raises(TemporaryError, match="unavailable for create deployments"):
        runtime.ensure_running(make_spec(source))
    pvc = double.must("", "persistentvolumeclaims", NAMESPACE, "workspace-data")

    status = runtime.ensure_running(make_spec(source))

    assert status.phase is base.Phase.STARTING
    updates = {c.resource for c in double.calls if c.verb == "update"}
    assert updates == {
        "configmaps",
        "secrets",
        "networkpolicies",
        "resourcequotas",
        "limitranges",
    }
    assert double.get("apps", "deployments", NAMESPACE, "workspace") is not None
    # The claim's spec is immutable once bound: adopted as it is, not replaced.
    assert double.get("", "persistentvolumeclaims", NAMESPACE, "workspace-data") == pvc


def test_unreachable_api_is_temporary(config: KubernetesConfig, tokens: Client) -> None:
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"
    configuration.retries = 0
    runtime = KubernetesRuntime(
        client.ApiClient(configuration), config, "test", clone_tokens=tokens
    )

    with pytest.raises(TemporaryError, match="unreachable"):
        runtime.ping()


def test_exec_without_a_running_pod_is_temporary(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    double.behaviour = PodBehaviour.MANUAL
    runtime.ensure_running(make_spec(source))

    with pytest.raises(TemporaryError, match="no running pod"):
        runtime.exec(KEY, ["true"])


def test_new_generation_replaces_the_old_namespace(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    running(runtime, source)

    assert (
        runtime.ensure_running(make_spec(source, generation=2)).phase
        is base.Phase.STARTING
    )
    assert double.get("", "namespaces", "", NAMESPACE) is None  # the old one went
    runtime.ensure_running(make_spec(source, generation=2))

    wait_for(lambda: phase_is(runtime, base.Phase.RUNNING), 10, "new generation")
    assert runtime.status(KEY).generation == 2


def test_destroyed_workspace_is_recreated_once_its_namespace_has_terminated(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    double.terminating_gets = 3
    running(runtime, source)
    first = double.must("", "namespaces", "", NAMESPACE)["metadata"]["uid"]
    runtime.remove(KEY)
    before = len(double.calls)

    # Terminating: the workspace is gone, and nothing is made in its namespace.
    assert runtime.status(KEY) == base.Status(base.Phase.MISSING)
    assert runtime.ensure_running(make_spec(source)).phase is base.Phase.STARTING
    runtime.remove(KEY)  # a destroy repeated meanwhile is harmless
    assert [c for c in double.calls[before:] if c.verb == "create"] == []

    # Once the namespace is gone, the same MR gets a new one.
    running(runtime, source)
    again = double.must("", "namespaces", "", NAMESPACE)
    assert again["metadata"]["uid"] != first
    assert again["status"]["phase"] == "Active"
    assert double.get("apps", "deployments", NAMESPACE, "workspace") is not None


def test_a_namespace_that_is_not_ours_is_neither_adopted_nor_deleted(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    double.seed("", "namespaces", {"metadata": {"name": NAMESPACE, "labels": {}}})

    with pytest.raises(ConfigError, match="is not this bot's"):
        runtime.ensure_running(make_spec(source))
    with pytest.raises(ConfigError, match="is not this bot's"):
        runtime.remove(KEY)
    assert double.get("", "namespaces", "", NAMESPACE) is not None


def test_bad_clone_source_is_refused_before_anything_is_made(
    runtime: KubernetesRuntime, double: KubeDouble, source: base.Source
) -> None:
    spec = make_spec(source)
    bad = base.Source("https://user:pw@gitlab.example.com/g/a.git", "main", "", "g/a")

    with pytest.raises(PermanentError, match="must not carry credentials"):
        runtime.ensure_running(base.Spec(spec.key, 1, spec.image, bad))
    assert double.items("", "namespaces") == []


# -- lost store ------------------------------------------------------------------------


def test_list_ours_finds_namespaces_by_label_and_remove_clears_them(
    runtime: KubernetesRuntime, double: KubeDouble
) -> None:
    labels = manifests.labels("test", base.WorkspaceKey(12, 34), 5)
    double.seed("", "namespaces", {"metadata": {"name": "left-over", "labels": labels}})
    other = manifests.labels("someone-else", base.WorkspaceKey(1, 1), 1)
    double.seed("", "namespaces", {"metadata": {"name": "not-mine", "labels": other}})
    double.seed("", "namespaces", {"metadata": {"name": "unrelated"}})

    found = list(runtime.list_ours())

    assert found == [base.Listed(base.WorkspaceKey(12, 34), 5, "left-over")]


def test_resync_with_a_lost_store_removes_the_orphan_and_keeps_a_wanted_one(
    runtime: KubernetesRuntime,
    double: KubeDouble,
    gitlab: GitLabDouble,
    config: KubernetesConfig,
    source: base.Source,
    tmp_path: Path,
    tokens: Client,
) -> None:
    served, mr = kube_double.mr_source(gitlab, "team/resync")
    wanted = base.WorkspaceKey(int(mr["project_id"]), int(mr["iid"]))
    runtime.ensure_running(make_spec(served, key=wanted))
    running(runtime, source)  # KEY: an MR no project of the bot's has open
    # Then the bot restarts with an empty store, serving team/resync only.
    settings = dataclasses.replace(
        harness.bot_settings(gitlab, "http://127.0.0.1:9", f"sqlite:///{tmp_path}/db"),
        instance="test",
        projects=("team/resync",),
    )
    store = Store(settings.database_url)
    store.migrate()
    fresh = KubernetesRuntime(
        kube_double.api_client(double), config, "test", clone_tokens=tokens
    )
    try:
        Reconciler(settings, store, Client(settings), fresh).resync()
    finally:
        store.dispose()

    assert double.get("", "namespaces", "", NAMESPACE) is None
    assert [listed.key for listed in fresh.list_ours()] == [wanted]


def test_list_ours_follows_continue_tokens(
    runtime: KubernetesRuntime, double: KubeDouble
) -> None:
    for iid in range(501):
        labels = manifests.labels("test", base.WorkspaceKey(1, iid), 1)
        double.seed(
            "", "namespaces", {"metadata": {"name": f"ns-{iid}", "labels": labels}}
        )

    assert len(list(runtime.list_ours())) == 501
    assert sum(1 for c in double.calls if c.resource == "namespaces") == 2


# -- configuration ---------------------------------------------------------------------


def test_config_from_env_reads_every_variable(tmp_path: Path) -> None:
    config = config_from_env(
        {
            "RWBOT_K8S_NAMESPACE_PREFIX": "rw-",
            "RWBOT_K8S_STORAGE_CLASS": "fast",
            "RWBOT_K8S_PVC_SIZE": "20Gi",
            "RWBOT_K8S_EGRESS": "allowlist",
            "RWBOT_K8S_GITLAB_CIDRS": "10.20.0.0/16",
            "RWBOT_K8S_EGRESS_ALLOW": "192.0.2.0/24, 2001:db8::/32",
            "RWBOT_K8S_RUNTIME_CLASS": "gvisor",
            "RWBOT_K8S_HOST_USERS": "false",
            "RWBOT_K8S_IMAGE_PULL_SECRETS": "a,b",
            "RWBOT_K8S_BOT_NAMESPACE": "bots",
            "RWBOT_K8S_BOT_POD_LABELS": "app=bot,tier=web",
            "RWBOT_K8S_READY_TIMEOUT": "90",
            "RWBOT_K8S_TEMPLATES": str(tmp_path),
        }
    )

    assert config.namespace_prefix == "rw-"
    assert config.egress_allow == ("10.20.0.0/16", "192.0.2.0/24", "2001:db8::/32")
    assert config.host_users is False
    assert config.image_pull_secrets == ("a", "b")
    assert config.bot_pod_labels == (("app", "bot"), ("tier", "web"))
    assert config.ready_timeout == 90.0
    assert config.templates == tmp_path
    assert config_from_env({}) == KubernetesConfig()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RWBOT_K8S_NAMESPACE_PREFIX", "Not_Valid"),
        ("RWBOT_K8S_PVC_SIZE", "ten gigs"),
        ("RWBOT_K8S_EGRESS", "everything"),
        ("RWBOT_K8S_GITLAB_CIDRS", "10.0.0.1/8"),
        ("RWBOT_K8S_HOST_USERS", "maybe"),
        ("RWBOT_K8S_BOT_POD_LABELS", "novalue"),
        ("RWBOT_K8S_READY_TIMEOUT", "-1"),
        ("RWBOT_K8S_TEMPLATES", "/nonexistent"),
    ],
)
def test_config_from_env_names_the_bad_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        config_from_env({name: value})


def test_namespace_names_fit_a_dns_label() -> None:
    key = base.WorkspaceKey(9_999_999_999, 9_999_999_999)
    name = manifests.namespace_name("rwbot-", "a" * 40, key)

    assert len(name) <= 63
    assert name.endswith("-p9999999999-mr9999999999")
    assert name != manifests.namespace_name("rwbot-", "a" * 39 + "b", key)
    assert manifests.namespace_name("rwbot-", "prod", key) == (
        "rwbot-prod-p9999999999-mr9999999999"
    )
