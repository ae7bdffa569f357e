"""``/workspace`` commands from MR comments, end to end on Podman.

Cases: stop and start by a Developer, acknowledged with emoji and answered in
the thread, and stop, start and restart keep the checkout and home directories;
a Guest's command refused with the reason; help, status and who answered with
the workspace as it is (state, commit, deadlines, who is connected, the latest
audit entries); fork approval pinned to the approved commit (a later push is not
run until approved again); commands in code blocks or quotes ignored; an edited
comment not run again, and the bot's own comments not run, even when recorded
by a web app that did not know the bot's user yet (a person's command next to
it runs); an unknown command
answered with help; a command on a merged MR answered, not run; rebuild asks for
--confirm while someone has a terminal open, then rebuilds from the MR's current
head; destroy and start again; restart recovers a failed workspace; extend moves
the deadlines up to a cap counted from the start, and only while running; invite
raises a Reporter to write and revoke locks them out, ending their live
terminal; a Reporter author may not revoke a Maintainer; a revoke while stopped
locks the account at the next start; a lock that fails is said so and tried
again, by revoke and by the access sweep alike; sync brings new commits into a
shell that stays open, without touching local changes, reports a conflict, and
says when the devfile changed (a rebuild applies it); with short configured
times, an open terminal holds off the idle stop, which follows once it closes,
and an expired workspace is destroyed, each after a warning in the comment; the
audit log records it all, the bot's own lifecycle actions too.
"""

import datetime as dt

import pytest
import requests
import sqlalchemy as sa

from bot import audit, provision
from bot.app import create_app
from bot.provision import Person
from bot.runtime.base import WorkspaceKey
from bot.store import CommandNote, Grant, utcnow
from tests import live, services
from tests.gitlab_double import DEVELOPER, GUEST, MAINTAINER, REPORTER

CHECKOUT = "/workspace/team/app"


@pytest.fixture
def people(stack):
    project = stack.gitlab.add_project("team/app", files={"README.md": "hello\n"})
    users = {}
    for name, level in (
        ("mia", MAINTAINER),
        ("dev", DEVELOPER),
        ("rita", REPORTER),
        ("gus", GUEST),
    ):
        users[name] = stack.gitlab.add_user(name)
        stack.gitlab.set_member(project, users[name], level)
    return project, users


@pytest.fixture
def running(stack, people):
    project, users = people
    mr = stack.gitlab.open_mr(
        project, "feature", {"app.py": "v1\n"}, author=users["dev"]
    )
    stack.deliver(stack.gitlab.mr_hook(mr, "open"))
    stack.settle_ready(mr)
    return mr


def command(stack, mr, user, body, action="create"):
    note = stack.gitlab.add_note(mr, user, body)
    assert stack.deliver(stack.gitlab.note_hook(note, action)).status_code == 200
    stack.settle()
    return note


def replies(stack, mr, note):
    return [
        n["body"]
        for n in stack.gitlab.notes(mr)
        if n.get("discussion_id") == note["discussion_id"] and n["id"] != note["id"]
    ]


def emoji(stack, note):
    return [e["name"] for e in stack.gitlab.award_emoji(note)]


def state(stack, mr):
    (container,) = stack.containers(mr)
    container.reload()
    return container.status


def join(stack, mr, user):
    """Join ``user`` to the workspace the way the join page does."""
    ws = stack.row(mr)
    return provision.join(
        stack.settings,
        stack.store,
        stack.client,
        stack.runtime,
        Person(user["id"], user["username"], user["name"], ""),
        WorkspaceKey(ws.project_id, ws.mr_iid),
    )


def log(stack, mr):
    """The audit log of ``mr`` as (actor, action, outcome), newest first."""
    entries = audit.latest(stack.store, mr["project_id"], mr["iid"])
    return [(e.actor, e.action, e.outcome) for e in entries]


def locked(stack, mr, name):
    users = stack.run_in(mr, "/opt/rwbot/rwctl", "users").splitlines()
    return any(line.split("\t")[0] == name and "locked" in line for line in users)


def test_a_developer_stops_and_starts_the_workspace_keeping_its_files(
    stack, people, running
):
    _, users = people
    join(stack, running, users["rita"])
    stack.run_in(running, "sh", "-c", f"echo mine > {CHECKOUT}/notes.txt")
    stack.run_in(running, "sh", "-c", "echo hers > ~/kept", user="rita")

    def files():
        return (
            stack.run_in(running, "cat", f"{CHECKOUT}/notes.txt"),
            stack.run_in(running, "cat", "/home/rita/kept"),
        )

    note = command(stack, running, users["dev"], "/workspace stop")
    assert state(stack, running) == "exited"
    assert "stopped" in stack.comment(running)
    assert emoji(stack, note) == ["eyes", "white_check_mark"]
    assert "Stopping" in replies(stack, running, note)[0]

    command(stack, running, users["dev"], "/workspace start")
    assert state(stack, running) == "running"
    assert "ready" in stack.comment(running)
    assert files() == ("mine\n", "hers\n")

    restarted = command(stack, running, users["dev"], "/workspace restart")
    assert emoji(stack, restarted)[-1] == "white_check_mark"
    assert state(stack, running) == "running"
    assert files() == ("mine\n", "hers\n")
    assert log(stack, running)[:2] == [
        ("bot", "restart", "ok"),
        ("dev", "command restart", "ok"),
    ]


def test_a_guests_command_is_refused_with_the_reason(stack, people, running):
    _, users = people
    note = command(stack, running, users["gus"], "/workspace stop")
    assert state(stack, running) == "running"
    assert emoji(stack, note) == ["eyes", "x"]
    (answer,) = replies(stack, running, note)
    assert "Developer" in answer and "Guest" in answer


def test_help_status_and_who_answer_with_the_workspace_as_it_is(stack, people, running):
    project, users = people
    helped = command(stack, running, users["rita"], "/workspace help")
    (usage,) = replies(stack, running, helped)
    assert "| Command |" in usage and "`/workspace extend <duration>`" in usage

    join(stack, running, users["rita"])
    shell = live.terminal(stack, project, running, users["dev"])
    asked = command(stack, running, users["rita"], "/workspace status")
    who = command(stack, running, users["rita"], "/workspace who")
    shell.close()

    ws = stack.row(running)
    (status,) = replies(stack, running, asked)
    assert "**State:** ready" in status
    assert f"**Commit:** `{stack.gitlab.mr(running)['sha'][:8]}`" in status
    assert f"**Stops when idle at:** {ws.stop_at:%Y-%m-%d %H:%M} UTC" in status
    assert f"**Expires at:** {ws.expires_at:%Y-%m-%d %H:%M} UTC" in status
    assert "@dev (write, connected now)" in status
    assert "@rita (read, last seen " in status
    latest = status.split("**Latest actions:**")[1]
    assert "@dev join (ok)" in latest and "@rita command help (ok)" in latest
    (people_now,) = replies(stack, running, who)
    assert "@dev (write, connected now)" in people_now
    assert "@rita (read, last seen " in people_now
    for note in (helped, asked, who):
        assert emoji(stack, note) == ["eyes", "white_check_mark"]


def test_commands_in_code_or_quotes_and_edited_or_bot_comments_are_not_run(
    stack, people, running
):
    _, users = people
    body = "```\n/workspace stop\n```\n> /workspace stop\n    /workspace stop"
    note = command(stack, running, users["dev"], body)
    assert emoji(stack, note) == []

    edited = command(stack, running, users["dev"], "/workspace help")
    assert emoji(stack, edited) == ["eyes", "white_check_mark"]
    assert len(replies(stack, running, edited)) == 1  # the help ran once
    stack.gitlab.edit_note(edited, "/workspace stop")
    assert stack.deliver(stack.gitlab.note_hook(edited, "update")).status_code == 200
    bot_note = stack.gitlab.add_note(running, stack.gitlab.bot_user, "/workspace stop")
    stack.deliver(stack.gitlab.note_hook(bot_note))
    stack.settle()
    assert state(stack, running) == "running"
    assert emoji(stack, edited) == ["eyes", "white_check_mark"]
    assert len(replies(stack, running, edited)) == 1  # nothing new in its thread
    assert emoji(stack, bot_note) == []


def test_with_the_bot_user_unknown_at_intake_only_peoples_commands_run(
    stack, people, running
):
    _, users = people
    # A web app that started while GitLab was down: it cannot tell the bot's
    # comments from people's, so it records both; the reconciler can.
    stack.app = create_app(
        stack.settings.with_overrides(bot_user_id=None),
        store=stack.store,
        gitlab=stack.client,
        runtime=stack.runtime,
    )
    bot_note = stack.gitlab.add_note(running, stack.gitlab.bot_user, "/workspace stop")
    person = stack.gitlab.add_note(running, users["dev"], "/workspace help")
    answers = [
        stack.deliver(stack.gitlab.note_hook(note)).json()["status"]
        for note in (bot_note, person)
    ]
    stack.settle()

    assert answers == ["queued", "queued"]
    assert emoji(stack, person) == ["eyes", "white_check_mark"]
    assert "/workspace stop" in replies(stack, running, person)[0]
    assert state(stack, running) == "running"
    assert emoji(stack, bot_note) == [] and replies(stack, running, bot_note) == []
    with stack.store.session() as session:
        recorded = session.scalars(
            sa.select(CommandNote).where(CommandNote.note_id == bot_note["id"])
        ).one()
    assert recorded.finished and recorded.replies == "[]"


def test_an_unknown_command_is_answered_with_help(stack, people, running):
    _, users = people
    note = command(stack, running, users["rita"], "/workspace frobnicate")
    (answer,) = replies(stack, running, note)
    assert "frobnicate" in answer and "/workspace stop" in answer


def test_a_command_on_a_merged_merge_request_is_answered_not_run(
    stack, people, running
):
    _, users = people
    stack.gitlab.merge(running)
    stack.deliver(stack.gitlab.mr_hook(running, "merge"))
    stack.settle()
    note = command(stack, running, users["dev"], "/workspace start")
    assert stack.containers(running) == []
    assert "merged" in replies(stack, running, note)[0]


def test_fork_approval_runs_only_the_approved_commit(stack, people):
    project, users = people
    fork = stack.gitlab.add_project("outsider/app", files={"README.md": "hello\n"})
    mr = stack.gitlab.open_mr(
        project, "feature", {"app.py": "v1\n"}, author=users["gus"], source_project=fork
    )
    stack.deliver(stack.gitlab.mr_hook(mr, "open"))
    stack.settle()
    assert stack.containers(mr) == []

    refused = command(stack, mr, users["rita"], "/workspace start")
    assert stack.containers(mr) == [] and emoji(stack, refused)[-1] == "x"
    approved_sha = stack.gitlab.mr(mr)["sha"]
    command(stack, mr, users["dev"], "/workspace start")
    assert (
        stack.run_in(mr, "git", "-C", CHECKOUT, "rev-parse", "HEAD").strip()
        == approved_sha
    )

    stack.gitlab.push(mr, {"app.py": "evil\n"})
    stack.deliver(stack.gitlab.mr_hook(mr, "update"))
    stack.settle()
    assert stack.run_in(mr, "cat", f"{CHECKOUT}/app.py") == "v1\n"
    assert "Behind" in stack.comment(mr)
    sync = command(stack, mr, users["dev"], "/workspace sync")
    assert "approval" in replies(stack, mr, sync)[0]
    assert stack.run_in(mr, "cat", f"{CHECKOUT}/app.py") == "v1\n"

    command(stack, mr, users["mia"], "/workspace start")
    assert stack.run_in(mr, "cat", f"{CHECKOUT}/app.py") == "evil\n"


def test_rebuild_asks_for_confirmation_while_someone_is_connected(
    stack, people, running
):
    project, users = people
    stack.run_in(running, "touch", f"{CHECKOUT}/local-change")
    shell = live.terminal(stack, project, running, users["rita"])
    note = command(stack, running, users["mia"], "/workspace rebuild")
    assert "@rita is connected" in replies(stack, running, note)[0]
    assert "--confirm" in replies(stack, running, note)[0]
    assert "local-change" in stack.run_in(running, "ls", CHECKOUT)

    new = stack.gitlab.push(running, {"lib.py": "v2\n"})
    stack.deliver(stack.gitlab.mr_hook(running, "update"))
    stack.settle()
    command(stack, running, users["mia"], "/workspace rebuild --confirm")
    shell.close()
    assert "local-change" not in stack.run_in(running, "ls", CHECKOUT)
    head = stack.run_in(running, "git", "-C", CHECKOUT, "rev-parse", "HEAD")
    assert head.strip() == new


def test_destroy_then_start_gives_a_fresh_workspace(stack, people, running):
    _, users = people
    command(stack, running, users["dev"], "/workspace destroy")  # the MR's author
    assert stack.containers(running) == [] and stack.volumes(running) == []
    assert log(stack, running)[0] == ("bot", "remove", "ok")
    command(stack, running, users["dev"], "/workspace start")
    (container,) = stack.containers(running)
    assert container.labels["rwbot.generation"] == "2"
    assert log(stack, running)[:2] == [
        ("bot", "start", "ok"),
        ("dev", "command start", "ok"),
    ]


def test_restart_recovers_a_workspace_whose_container_died(stack, people, running):
    _, users = people
    (container,) = stack.containers(running)
    container.kill()
    stack.make_due()
    stack.settle()
    assert "failed" in stack.comment(running)
    assert "stopped unexpectedly" in stack.comment(running)

    command(stack, running, users["dev"], "/workspace restart")
    assert state(stack, running) == "running"
    assert "ready" in stack.comment(running)


def test_extend_moves_the_deadlines_up_to_a_cap_counted_from_the_start(
    stack, people, running
):
    _, users = people
    before = stack.row(running)
    started = before.started_at
    lifetime = dt.timedelta(seconds=stack.settings.max_lifetime)
    assert started is not None and before.expires_at == started + lifetime
    cap = started + dt.timedelta(seconds=stack.settings.max_extended_lifetime)
    assert cap == started + dt.timedelta(days=30)  # the default, as replies say

    first = command(stack, running, users["dev"], "/workspace extend 20d")
    after = stack.row(running)
    assert after.expires_at - before.expires_at == dt.timedelta(days=20)
    assert after.stop_at > before.stop_at
    assert "expiry moved" in replies(stack, running, first)[0]

    # 7 + 20 + 20 days is past the cap: the first extend did not move it.
    second = command(stack, running, users["dev"], "/workspace extend 20d")
    capped = stack.row(running)
    assert (capped.expires_at, capped.started_at) == (cap, started)
    assert emoji(stack, second)[-1] == "white_check_mark"
    assert (
        "the latest allowed (30 days after it started)"
        in (replies(stack, running, second)[0])
    )

    third = command(stack, running, users["dev"], "/workspace extend 1d")
    assert stack.row(running).expires_at == cap
    assert emoji(stack, third)[-1] == "x"
    assert "cannot be extended further" in replies(stack, running, third)[0]

    command(stack, running, users["dev"], "/workspace stop")
    stopped = command(stack, running, users["dev"], "/workspace extend 2h")
    assert emoji(stack, stopped)[-1] == "x"
    assert "not running" in replies(stack, running, stopped)[0]


def test_invite_gives_a_reporter_write_and_revoke_locks_them_out(
    stack, people, running
):
    _, users = people
    refused = command(stack, running, users["rita"], "/workspace invite @rita write")
    assert emoji(stack, refused)[-1] == "x"  # a Reporter may not invite
    command(stack, running, users["mia"], "/workspace invite @rita write")
    assert join(stack, running, users["rita"]).role.value == "write"

    note = command(stack, running, users["mia"], "/workspace revoke @rita")
    assert (
        "sessions were ended and their account locked"
        in (replies(stack, running, note)[0])
    )
    assert locked(stack, running, "rita")
    with pytest.raises(provision.Refused):
        join(stack, running, users["rita"])


def test_a_reporter_author_may_not_revoke_a_maintainer(stack, people):
    project, users = people
    mr = stack.gitlab.open_mr(
        project, "feature", {"app.py": "v1\n"}, author=users["rita"]
    )
    stack.deliver(stack.gitlab.mr_hook(mr, "open"))
    stack.settle_ready(mr)

    note = command(stack, mr, users["rita"], "/workspace revoke @mia")
    assert emoji(stack, note)[-1] == "x"
    (answer,) = replies(stack, mr, note)
    assert "Maintainer" in answer and "you have Reporter" in answer
    with stack.store.session() as s:
        assert s.scalars(sa.select(Grant)).all() == []
    assert join(stack, mr, users["mia"]).role.value == "write"


def test_a_revoke_while_stopped_locks_the_account_at_the_next_start(
    stack, people, running
):
    _, users = people
    join(stack, running, users["rita"])
    command(stack, running, users["dev"], "/workspace stop")

    note = command(stack, running, users["mia"], "/workspace revoke @rita")
    assert "locked when it next starts" in replies(stack, running, note)[0]
    assert emoji(stack, note)[-1] == "white_check_mark"

    command(stack, running, users["dev"], "/workspace start")
    assert locked(stack, running, "rita")
    assert ("bot", "lock", "ok") in log(stack, running)
    with pytest.raises(provision.Refused):
        join(stack, running, users["rita"])


def test_a_lock_that_fails_is_reported_and_tried_again(stack, people, running):
    _, users = people
    join(stack, running, users["rita"])
    tool = "/opt/rwbot/rwctl"
    mode = stack.run_in(running, "stat", "-c", "%a", tool).strip()
    stack.run_in(running, "chmod", "0", tool)  # a broken image: lock cannot run

    note = stack.gitlab.add_note(running, users["mia"], "/workspace revoke @rita")
    stack.deliver(stack.gitlab.note_hook(note))
    services.wait_for(
        lambda: _reconciled(stack) and "x" in emoji(stack, note),
        timeout=60,
        what="the revoke to be answered",
    )
    (answer,) = replies(stack, running, note)
    assert "locking their account in the workspace failed" in answer
    assert "sessions were ended" not in answer

    stack.run_in(running, "chmod", mode, tool)
    stack.settle()  # retried with backoff until it works
    assert locked(stack, running, "rita")
    assert log(stack, running)[0] == ("bot", "lock", "ok")


def test_revoke_ends_a_live_session(stack, people, running):
    project, users = people
    shell = live.terminal(stack, project, running, users["rita"])
    command(stack, running, users["mia"], "/workspace revoke @rita")
    live.read_to_end(shell)
    uid = str(100000 + users["rita"]["id"])
    assert uid not in stack.run_in(running, "ps", "-eo", "uid=").split()
    stack.gitlab.login_as(users["rita"])
    r = requests.get(stack.url + live.join_path(project, running), timeout=30)
    assert r.status_code == 403


def test_invite_of_a_non_member_is_refused(stack, people, running):
    _, users = people
    stack.gitlab.add_user("outsider")
    note = command(stack, running, users["mia"], "/workspace invite @outsider")
    assert "not a member" in replies(stack, running, note)[0]


def test_sync_brings_new_commits_and_keeps_local_changes(stack, people, running):
    project, users = people
    shell = live.terminal(stack, project, running, users["dev"])
    stack.run_in(running, "sh", "-c", f"echo mine > {CHECKOUT}/notes.txt")
    new = stack.gitlab.push(running, {"lib.py": "v2\n"})
    stack.deliver(stack.gitlab.mr_hook(running, "update"))
    stack.settle()

    note = command(stack, running, users["dev"], "/workspace sync")
    assert "devfile" not in replies(stack, running, note)[0]
    # The shell that was open before the sync is still there, in the checkout,
    # and sees the new commit.
    live.type_in(shell, "git log -1 --format=C%H; pwd\n")
    assert f"C{new}" in live.read_until(shell, f"C{new}")
    shell.close()
    assert stack.run_in(running, "cat", f"{CHECKOUT}/lib.py") == "v2\n"
    assert stack.run_in(running, "cat", f"{CHECKOUT}/notes.txt") == "mine\n"
    assert new[:8] in stack.comment(running) and "Behind" not in stack.comment(running)
    deployed = [c.json["sha"] for c in stack.gitlab.calls("POST", r"/deployments$")]
    assert deployed[-1] == new  # the MR widget follows the synced commit

    stack.run_in(running, "sh", "-c", f"echo local > {CHECKOUT}/lib.py")
    stack.gitlab.push(running, {"lib.py": "v3\n"})
    stack.deliver(stack.gitlab.mr_hook(running, "update"))
    stack.settle()
    note = command(stack, running, users["dev"], "/workspace sync")
    assert "local changes" in replies(stack, running, note)[0]
    assert stack.run_in(running, "cat", f"{CHECKOUT}/lib.py") == "local\n"


def test_sync_says_a_changed_devfile_needs_a_rebuild(stack, people, running):
    _, users = people
    devfile = "schemaVersion: 2.2.0\ncomponents:\n  - name: tools\n"
    devfile += f"    container:\n      image: {services.WORKSPACE_IMAGE}\n"
    stack.gitlab.push(running, {".devfile.yaml": devfile})
    stack.deliver(stack.gitlab.mr_hook(running, "update"))
    stack.settle()

    note = command(stack, running, users["dev"], "/workspace sync")

    (reply,) = replies(stack, running, note)
    assert "The devfile changed" in reply
    assert "`/workspace rebuild` to apply it" in reply
    assert stack.run_in(running, "cat", f"{CHECKOUT}/.devfile.yaml") == devfile


@pytest.mark.stack_settings(idle_timeout=8, warn_before=4)
def test_an_idle_stop_waits_for_connected_people_then_stops(stack, people, running):
    project, users = people
    shell = live.terminal(stack, project, running, users["dev"])
    first_deadline = stack.row(running).stop_at

    # Past the first idle deadline, the open terminal has kept it running.
    services.wait_for(
        lambda: _reconciled(stack) and utcnow() > first_deadline + SECOND,
        timeout=60,
        what="the first idle deadline to pass",
    )
    assert state(stack, running) == "running"
    assert stack.row(running).stop_at > first_deadline

    shell.close()
    comments = _watch_until(stack, running, lambda: state(stack, running) == "exited")
    assert any("soon: use it" in c for c in comments)  # warned first
    assert "nobody used it" in stack.comment(running)
    assert len(stack.containers(running)) == 1  # stopped, not removed
    assert log(stack, running)[0] == ("bot", "idle stop", "ok")
    assert ("bot", "start", "ok") in log(stack, running)


@pytest.mark.stack_settings(max_lifetime=8, warn_before=4)
def test_an_expired_workspace_is_destroyed_after_a_warning(stack, people, running):
    comments = _watch_until(stack, running, lambda: stack.containers(running) == [])
    assert any("soon: comment `/workspace extend 1d`" in c for c in comments)
    assert "maximum lifetime" in stack.comment(running)
    assert stack.volumes(running) == []
    entries = audit.latest(stack.store, running["project_id"], running["iid"])
    assert (entries[0].actor, entries[0].action, entries[0].outcome) == (
        "bot",
        "expire",
        "ok",
    )
    assert "maximum lifetime of 8s" in entries[0].detail


SECOND = dt.timedelta(seconds=1)


def _reconciled(stack) -> bool:
    stack.reconciler.run_once()
    return True


def _watch_until(stack, mr, done, timeout=60):
    """Run the reconciler until ``done()``; the comment's versions on the way."""
    seen = []

    def check():
        stack.reconciler.run_once()
        if not seen or seen[-1] != stack.comment(mr):
            seen.append(stack.comment(mr))
        return done()

    services.wait_for(check, timeout=timeout, what="the workspace's deadline")
    return seen


def test_the_audit_log_records_commands(stack, people, running):
    _, users = people
    command(stack, running, users["dev"], "/workspace stop")
    command(stack, running, users["gus"], "/workspace start")
    assert log(stack, running)[:4] == [
        ("gus", "command start", "refused"),
        ("bot", "stop", "ok"),
        ("dev", "command stop", "ok"),
        ("bot", "start", "ok"),
    ]


def test_a_member_who_lost_access_is_locked_by_the_sweep(stack, people, running):
    project, users = people
    ws = stack.row(running)
    join(stack, running, users["rita"])
    stack.gitlab.remove_member(project, users["rita"])

    stack.reconciler.resync()

    assert "\tlocked" in stack.run_in(running, "/opt/rwbot/rwctl", "users")
    actions = [e.action for e in audit.latest(stack.store, ws.project_id, ws.mr_iid)]
    assert "access lost" in actions and "join" in actions


def test_a_sweep_whose_lock_fails_leaves_the_member_to_lock_next_time(
    stack, people, running
):
    project, users = people
    join(stack, running, users["rita"])
    tool = "/opt/rwbot/rwctl"
    mode = stack.run_in(running, "stat", "-c", "%a", tool).strip()
    stack.run_in(running, "chmod", "0", tool)  # a broken image: lock cannot run
    stack.gitlab.remove_member(project, users["rita"])

    stack.reconciler.resync()

    assert log(stack, running)[0] == ("rita", "lock", "failed")
    stack.run_in(running, "chmod", mode, tool)
    assert not locked(stack, running, "rita")
    stack.reconciler.resync()
    assert locked(stack, running, "rita")
    assert log(stack, running)[:2] == [
        ("bot", "access lost", "ok"),
        ("rita", "lock", "ok"),
    ]


def test_rwbot_audit_prints_the_log(stack, people, running):
    import os
    import subprocess
    import sys

    _, users = people
    command(stack, running, users["dev"], "/workspace stop")
    env = {
        **os.environ,
        "RWBOT_GITLAB_URL": stack.settings.gitlab_url,
        "RWBOT_GITLAB_TOKEN": "unused",
        "RWBOT_WEBHOOK_SECRET": "unused",
        "RWBOT_PUBLIC_URL": stack.settings.public_url,
        "RWBOT_DATABASE_URL": stack.settings.database_url,
    }
    out = subprocess.run(
        [sys.executable, "-m", "bot.cli", "audit", "--mr", str(running["iid"])],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "dev command stop ok /workspace stop" in out
