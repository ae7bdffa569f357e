"""Workspaces follow the devfile of the commit they run, on real Podman.

Cases: the devfile's image, environment (in a reviewer's shell too), memory
limit, volume and postStart commands are applied, and the comment names the
endpoint with the setting that exposes it (exposed endpoints:
tests/test_endpoints_workspace.py); an invalid devfile fails the workspace with
a comment naming the key and line; a devfile registry sample fails with a
comment naming each of its four unsupported features (more than the problems
spelled out in full); an image outside the admin's allow-list is refused; after
a fork approval, the devfile is read from the approved commit, not the fork's
newer head; a project without a devfile gets the default image.
"""

import subprocess
from pathlib import Path

import pytest

from bot import accounts
from tests import harness, live, services
from tests.gitlab_double import DEVELOPER, REPORTER

DEVFILE_IMAGE = "localhost/rwbot-devfile:test"

DEVFILE = """\
schemaVersion: 2.2.0
components:
  - name: tooling
    attributes:
      gl/inject-editor: true
    container:
      image: {image}
      memoryLimit: 300Mi
      env:
        - name: GREETING
          value: hello from the devfile
      endpoints:
        - name: web
          targetPort: 8080
      volumeMounts:
        - name: cache
          path: /cache
  - name: cache
    volume:
      size: 1Gi
commands:
  - id: prepare
    exec:
      component: tooling
      commandLine: echo "$GREETING by $(id -un)" > prepared.txt && echo {marker}
events:
  postStart:
    - prepare
"""


@pytest.fixture(scope="module", autouse=True)
def devfile_image(docker_host):
    subprocess.run(
        ["podman", "tag", services.WORKSPACE_IMAGE, DEVFILE_IMAGE],
        env=services.podman_env(),
        check=True,
    )


@pytest.fixture
def project(stack):
    p = stack.gitlab.add_project("team/app")
    author = stack.gitlab.add_user("author")
    stack.gitlab.set_member(p, author, DEVELOPER)
    return p


def open_mr(stack, project, files, **kwargs):
    mr = stack.gitlab.open_mr(project, "feature", files, **kwargs)
    stack.deliver(stack.gitlab.mr_hook(mr, "open"))
    stack.settle()
    return mr


def test_the_devfile_shapes_the_workspace(stack, project):
    mr = open_mr(
        stack,
        project,
        {".devfile.yaml": DEVFILE.format(image=DEVFILE_IMAGE, marker="v1")},
    )

    (container,) = stack.containers(mr)
    assert container.attrs["Config"]["Image"].endswith("rwbot-devfile:test")
    assert "GREETING=hello from the devfile" in container.attrs["Config"]["Env"]
    assert container.attrs["HostConfig"]["Memory"] == 300 * 1024 * 1024
    assert "/cache" in [m["Destination"] for m in container.attrs["Mounts"]]
    checkout = "/workspace/team/app"
    assert (
        stack.run_in(mr, "cat", f"{checkout}/prepared.txt")
        == "hello from the devfile by rwbot-devfile\n"  # the MR's code: not root
    )
    assert "v1" in stack.run_in(mr, "cat", "/var/log/rwbot-poststart.log")
    body = stack.comment(mr)
    assert "ready" in body and "endpoints" in body and "postStart" in body

    rita = stack.gitlab.add_user("rita")
    stack.gitlab.set_member(project, rita, REPORTER)
    live.signed_in(stack, project, mr, rita)  # joins: her account is made
    shell = accounts.shell_argv("rita", 'echo "$GREETING as $(whoami)"')
    assert stack.run_in(mr, *shell) == "hello from the devfile as rita\n"


def test_an_invalid_devfile_fails_the_workspace_naming_key_and_line(stack, project):
    bad = DEVFILE.format(image=DEVFILE_IMAGE, marker="x").replace(
        "- name: tooling", "- name: gl-tooling"
    )
    mr = open_mr(stack, project, {".devfile.yaml": bad})

    assert stack.containers(mr) == []
    body = stack.comment(mr)
    assert "failed" in body and "line 3" in body and "gl-" in body


def test_a_registry_sample_fails_naming_each_unsupported_feature(stack, project):
    sample = Path(__file__).parent / "devfiles" / "registry_python_basic.yaml"
    mr = open_mr(stack, project, {".devfile.yaml": sample.read_text()})

    assert stack.containers(mr) == []
    body = stack.comment(mr)
    assert "failed" in body
    # The comment escapes Markdown: `components[0]` reads \`components\[0\]\`.
    for key in (
        r"\`parent\`",
        r"\`components\[0\].image\`",
        r"\`components\[1\].kubernetes\`",
        r"\`commands\[2\].composite\`",
    ):
        assert key in body, key


def test_an_image_outside_the_allow_list_is_refused(docker_host, tmp_path):
    stack = harness.Stack(docker_host, tmp_path, devfile_images=("registry.example/*",))
    try:
        p = stack.gitlab.add_project("team/app")
        author = stack.gitlab.add_user("author")
        mr = open_mr(
            stack,
            p,
            {".devfile.yaml": DEVFILE.format(image=DEVFILE_IMAGE, marker="x")},
            author=author,
        )
        assert stack.containers(mr) == []
        assert "rwbot-devfile" in stack.comment(mr) and "failed" in stack.comment(mr)
    finally:
        stack.close()


def test_a_fork_runs_the_devfile_of_the_approved_commit(stack, project):
    fork = stack.gitlab.add_project("outsider/app")
    outsider = stack.gitlab.add_user("outsider")
    dev = stack.gitlab.add_user("dev")
    stack.gitlab.set_member(project, dev, DEVELOPER)
    mr = open_mr(
        stack,
        project,
        {".devfile.yaml": DEVFILE.format(image=DEVFILE_IMAGE, marker="approved")},
        author=outsider,
        source_project=fork,
    )
    # The approval is written while the first commit is the head; a push lands
    # before the bot gets to it.
    note = stack.gitlab.add_note(mr, dev, "/workspace start")
    approval = stack.gitlab.note_hook(note)
    stack.gitlab.push(
        mr,
        {".devfile.yaml": DEVFILE.format(image=DEVFILE_IMAGE, marker="pushed-later")},
    )
    stack.deliver(approval)
    stack.deliver(stack.gitlab.mr_hook(mr, "update"))
    stack.settle()

    log = stack.run_in(mr, "cat", "/var/log/rwbot-poststart.log")
    assert "approved" in log and "pushed-later" not in log


def test_without_a_devfile_the_default_image_is_used(stack, project):
    mr = open_mr(stack, project, {"app.py": "print(1)\n"})
    (container,) = stack.containers(mr)
    assert container.attrs["Config"]["Image"].endswith("rwbot-workspace:test")
    assert "Notes" not in stack.comment(mr)
