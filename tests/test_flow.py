"""The whole flow on real Podman with the GitLab double.

Cases: an opened MR gets one comment with a join link and a running container
with the MR head checked out (and no credential anywhere in it); a push makes
the comment say the workspace is behind; merging removes the container and its
volume and says so; a reopened MR gets a fresh workspace; a fork MR gets no
container and a comment asking for approval, and once approved a deployment at
``refs/merge-requests/<iid>/head`` (the fork's branch is not in the project); a
deployment GitLab refuses is not asked for again on every pass; redelivered
events and repeated reconcile passes never post a second comment; a missed merge
webhook is corrected by the resync; an orphaned container is removed by the
resync; the container the bot creates is hardened as configured (capabilities,
init, no-new-privileges, limits, labels), and PID 1 and a reviewer's shell hold
the capabilities they should and no more.
"""

import pytest

from bot import accounts
from tests import harness
from tests.gitlab_double import DEVELOPER

#: Capability numbers from linux/capability.h, for reading /proc/<pid>/status.
CAP_BITS = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "FOWNER": 3,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
}
#: Exactly what the workspace keeps: user provisioning, and KILL so that
#: revoking a reviewer can end their processes (root may not signal another
#: user's processes without it).
KEPT = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "SETGID", "SETUID"}
#: What Docker grants a container unless told otherwise; Podman's Docker API
#: reports dropped capabilities against the same set.
ENGINE_DEFAULTS = KEPT | {
    "AUDIT_WRITE",
    "FSETID",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETPCAP",
    "SYS_CHROOT",
}


@pytest.fixture
def project(stack):
    p = stack.gitlab.add_project("team/app", files={"README.md": "hello\n"})
    dev = stack.gitlab.add_user("dana", name="Dana Dev")
    stack.gitlab.set_member(p, dev, DEVELOPER)
    return p


def open_mr(stack, project, **kwargs):
    mr = stack.gitlab.open_mr(project, "feature", {"app.py": "print('v1')\n"}, **kwargs)
    assert stack.deliver(stack.gitlab.mr_hook(mr, "open")).status_code == 200
    return mr


def test_an_opened_merge_request_gets_a_workspace_and_one_comment(stack, project):
    mr = open_mr(stack, project)
    stack.settle()

    body = stack.comment(mr)
    assert "ready" in body
    assert f"{stack.url}/w/{project['id']}/{mr['iid']}" in body
    assert stack.gitlab.mr(mr)["sha"][:8] in body
    (container,) = stack.containers(mr)
    assert container.status == "running"
    checkout = "/workspace/team/app"
    assert stack.run_in(mr, "cat", f"{checkout}/app.py") == "print('v1')\n"
    head = stack.run_in(mr, "git", "-C", checkout, "rev-parse", "HEAD").strip()
    assert head == stack.gitlab.mr(mr)["sha"]


def test_no_credential_is_left_in_the_workspace(stack, project):
    mr = open_mr(stack, project)
    stack.settle()
    # Read everything out and search here, so the token never appears in the
    # command that looks for it.
    everything = stack.run_in(
        mr,
        "sh",
        "-c",
        "cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null;"
        " find /workspace /etc /opt /root /home /tmp /var -xdev -type f -size -2M"
        " -exec cat {} + 2>/dev/null; true",
    )
    assert len(everything) > 10_000  # it did read the checkout and /etc
    assert stack.gitlab.token not in everything
    config = stack.run_in(mr, "cat", "/workspace/team/app/.git/config")
    assert (
        "Authorization" not in config and "@" not in config.split("url =")[1].split()[0]
    )


def test_a_push_makes_the_comment_say_the_workspace_is_behind(stack, project):
    mr = open_mr(stack, project)
    stack.settle()
    first = stack.gitlab.mr(mr)["sha"]

    new = stack.gitlab.push(mr, {"app.py": "print('v2')\n"})
    stack.deliver(stack.gitlab.mr_hook(mr, "update"))
    stack.settle()

    body = stack.comment(mr)
    assert "Behind" in body and new[:8] in body and first[:8] in body
    assert stack.run_in(mr, "cat", "/workspace/team/app/app.py") == "print('v1')\n"


def test_merging_removes_the_container_and_its_volume(stack, project):
    mr = open_mr(stack, project)
    stack.settle()
    assert stack.volumes(mr)

    stack.gitlab.merge(mr)
    stack.deliver(stack.gitlab.mr_hook(mr, "merge"))
    stack.settle()

    assert stack.containers(mr) == []
    assert stack.volumes(mr) == []
    body = stack.comment(mr)
    assert "removed" in body and "merged" in body
    assert "/w/" not in body  # no join link for a removed workspace


def test_a_reopened_merge_request_gets_a_fresh_workspace(stack, project):
    mr = open_mr(stack, project)
    stack.settle()
    stack.run_in(mr, "touch", "/workspace/team/app/left-behind")

    stack.gitlab.close(mr)
    stack.deliver(stack.gitlab.mr_hook(mr, "close"))
    stack.settle()
    assert stack.containers(mr) == []

    stack.gitlab.reopen(mr)
    stack.deliver(stack.gitlab.mr_hook(mr, "reopen"))
    stack.settle()
    (container,) = stack.containers(mr)
    assert container.labels["rwbot.generation"] == "2"
    assert "left-behind" not in stack.run_in(mr, "ls", "/workspace/team/app")
    assert "ready" in stack.comment(mr)


def test_a_fork_merge_request_starts_nothing_and_asks_for_approval(stack, project):
    fork = stack.gitlab.add_project("outsider/app", files={"README.md": "hello\n"})
    mr = open_mr(stack, project, source_project=fork)
    stack.settle()

    assert stack.containers(mr) == []
    body = stack.comment(mr)
    assert "fork" in body and "Developer" in body and "/workspace start" in body


def test_an_approved_fork_merge_request_gets_a_deployment_at_its_mr_ref(stack, project):
    fork = stack.gitlab.add_project("outsider/app", files={"README.md": "hello\n"})
    mr = open_mr(stack, project, source_project=fork)
    stack.settle()
    note = stack.gitlab.add_note(mr, "dana", "/workspace start")
    stack.deliver(stack.gitlab.note_hook(note))
    stack.settle()

    # The fork's branch is not in the project, so GitLab would refuse it.
    (call,) = stack.gitlab.calls("POST", r"/deployments$")
    assert call.status == 201, call.json
    assert call.json["ref"] == f"refs/merge-requests/{mr['iid']}/head"
    assert call.json["sha"] == stack.gitlab.mr(mr)["sha"]
    (env,) = stack.gitlab.environments(project)
    assert env["state"] == "available"


def test_a_refused_deployment_is_not_asked_for_again_on_every_pass(stack, project):
    stack.gitlab.inject_faults(400, every=1, paths=r"/deployments$")
    mr = open_mr(stack, project)
    stack.settle()
    stack.make_due()
    stack.settle()

    assert len(stack.gitlab.calls("POST", r"/deployments$")) == 1
    assert "ready" in stack.comment(mr)


def test_redeliveries_and_repeated_passes_never_post_a_second_comment(stack, project):
    mr = open_mr(stack, project)
    payload = stack.gitlab.mr_hook(mr, "open")
    stack.deliver(payload, headers={"Idempotency-Key": "same"})
    stack.deliver(payload, headers={"Idempotency-Key": "same"})
    stack.settle()
    stack.make_due()
    stack.settle()
    # The comment id was lost (as if the store had been restored from backup):
    with stack.store.session() as s:
        s.execute(
            harness.sa.update(harness.Workspace).values(note_id=None, note_digest=None)
        )
    stack.make_due()
    stack.settle()

    assert len(stack.bot_notes(mr)) == 1
    posts = stack.gitlab.calls("POST", r"/merge_requests/\d+/notes$")
    assert len(posts) == 1


def test_a_missed_merge_webhook_is_corrected_by_the_resync(stack, project):
    mr = open_mr(stack, project)
    stack.settle()
    stack.gitlab.merge(mr)  # the webhook never arrives

    stack.reconciler.resync()
    stack.settle()

    assert stack.containers(mr) == []
    assert "merged" in stack.comment(mr)


def test_an_open_merge_request_nobody_told_us_about_is_found_by_the_resync(
    stack, project
):
    mr = stack.gitlab.open_mr(project, "quiet", {"a.txt": "a\n"})
    stack_settings = stack.settings.with_overrides(projects=("team/app",))
    stack.reconciler.resyncer.settings = stack_settings

    stack.reconciler.resync()
    stack.settle()

    assert len(stack.containers(mr)) == 1
    assert "ready" in stack.comment(mr)


def test_an_orphaned_container_is_removed_by_the_resync(stack, project):
    mr = open_mr(stack, project)
    stack.settle()
    with stack.store.session() as s:  # the store lost the workspace
        s.execute(harness.sa.delete(harness.Workspace))

    stack.reconciler.resync()

    assert stack.containers(mr) == []
    assert stack.volumes(mr) == []


def test_the_merge_request_widget_links_to_the_join_page(stack, project):
    mr = open_mr(stack, project)
    stack.settle()
    (env,) = stack.gitlab.environments(project)
    assert env["name"] == f"review-workspace/mr-{mr['iid']}"
    assert env["external_url"] == f"{stack.url}/w/{project['id']}/{mr['iid']}"
    assert env["state"] == "available"
    first = stack.gitlab.mr(mr)["sha"]
    deployed = [
        c.json["sha"]
        for c in stack.gitlab.calls("POST", r"/deployments$")
        if c.status < 300
    ]
    assert deployed == [first]

    stack.gitlab.push(mr, {"app.py": "print('v2')\n"})
    stack.deliver(stack.gitlab.mr_hook(mr, "update"))
    stack.settle()
    # The workspace still runs the first commit: no deployment for the second.
    assert len(stack.gitlab.calls("POST", r"/deployments$")) == 1

    stack.gitlab.merge(mr)
    stack.deliver(stack.gitlab.mr_hook(mr, "merge"))
    stack.settle()
    (env,) = stack.gitlab.environments(project)
    assert env["state"] == "stopped"


def _status_fields(status: str) -> dict[str, str]:
    return dict(
        (name, value.strip())
        for name, _, value in (line.partition(":") for line in status.splitlines())
    )


def _caps(mask: str) -> set[str]:
    bits = int(mask, 16)
    unknown = bits & ~sum(1 << b for b in CAP_BITS.values())
    assert unknown == 0, f"capabilities beyond the known ones: {unknown:#x}"
    return {name for name, bit in CAP_BITS.items() if bits >> bit & 1}


def test_the_bots_container_is_hardened_as_configured(stack, project):
    mr = open_mr(stack, project)
    stack.settle()
    (container,) = stack.containers(mr)
    container.reload()
    host = container.attrs["HostConfig"]

    dropped = {c.upper().removeprefix("CAP_") for c in host["CapDrop"] or ()}
    added = {c.upper().removeprefix("CAP_") for c in host["CapAdd"] or ()}
    # Docker reports what was asked (drop ALL, add KEPT); Podman reports the
    # difference from its default set. Either way: nothing kept is dropped,
    # nothing else is added, and every other default capability is gone.
    assert added <= KEPT
    assert not dropped & KEPT
    assert "ALL" in dropped or dropped >= ENGINE_DEFAULTS - KEPT
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Init"] is True
    assert host["PidsLimit"] == stack.settings.workspace_pids
    assert host["Memory"] == 512 * 1024 * 1024  # workspace_memory="512m"
    assert host["NanoCpus"] == int(stack.settings.workspace_cpus * 1e9)
    labels = container.labels
    assert labels["app.kubernetes.io/managed-by"] == "review-workspace-bot"
    assert labels["rwbot.project-id"] == str(project["id"])
    assert labels["rwbot.mr-iid"] == str(mr["iid"])

    init = _status_fields(stack.run_in(mr, "cat", "/proc/1/status"))
    assert _caps(init["CapEff"]) == KEPT
    assert _caps(init["CapBnd"]) == KEPT
    assert init["NoNewPrivs"] == "1"
    assert init["Seccomp"] == "2"  # the engine's default seccomp filter

    stack.run_in(
        mr,
        *accounts.adduser_argv(
            name="dana",
            gitlab_user_id=4242,
            gitlab_username="dana",
            role=accounts.Role.WRITE,
            git_name="Dana Dev",
            git_email="dana@example.com",
        ),
    )
    shell = _status_fields(
        stack.run_in(mr, *accounts.shell_argv("dana", command="cat /proc/self/status"))
    )
    assert shell["Uid"].split()[0] == str(accounts.uid_for(4242))
    for field in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert _caps(shell[field]) == set(), field
    assert shell["NoNewPrivs"] == "1"
