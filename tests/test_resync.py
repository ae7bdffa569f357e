"""The resync repairs a workspace that changed behind the bot's back, on Podman.

Cases: a ready workspace whose container was force-removed is recreated by the
next resync, with the MR head checked out, a comment that says ready and no
longer lists the people whose accounts went with the container, and a join
link that provisions them again; one whose container was stopped is reported
in the comment as stopped unexpectedly.
"""

from tests import live
from tests.gitlab_double import DEVELOPER


def test_the_resync_recreates_a_vanished_container_and_reports_a_stopped_one(stack):
    project = stack.gitlab.add_project("team/app", files={"README.md": "hello\n"})
    dana = stack.gitlab.add_user("dana")
    stack.gitlab.set_member(project, dana, DEVELOPER)
    mr = stack.gitlab.open_mr(project, "feature", {"app.py": "print(1)\n"})
    stack.deliver(stack.gitlab.mr_hook(mr, "open"))
    stack.settle()
    live.signed_in(stack, project, mr, dana)
    stack.settle()
    assert "@dana (write)" in stack.comment(mr)
    (old,) = stack.containers(mr)

    # Through the same Docker API the bot uses, as an operator might.
    old.remove(force=True)
    assert stack.containers(mr) == []
    stack.reconciler.resync()
    stack.settle()

    (new,) = stack.containers(mr)
    assert new.id != old.id and new.status == "running"
    assert stack.run_in(mr, "cat", "/workspace/team/app/app.py") == "print(1)\n"
    body = stack.comment(mr)
    assert "ready" in body and stack.gitlab.mr(mr)["sha"][:8] in body
    assert "@dana" not in body
    live.signed_in(stack, project, mr, dana)  # the join page answers 200
    assert "dana" in stack.run_in(mr, "getent", "passwd", "dana")

    new.stop(timeout=1)
    stack.reconciler.resync()
    stack.settle()

    assert "stopped unexpectedly" in stack.comment(mr)
