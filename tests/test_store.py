"""The store on SQLite and PostgreSQL: migrations, claims and their leases,
releasing a row that changed during a pass, and the lifecycle decisions that
fold GitLab's facts into a row.

Cases: the redeemed-tickets table migrates up from 0004 (a ticket is taken once)
and back down; a due row is claimed by exactly one worker; an expired lease lets
another worker take over (the first was killed); a worker claims again at once
what a failed release left it holding; a row changed by an event
during a pass stays due; stale and unchanged facts do not bump the row; a
reopened MR gets a new generation; fork and draft MRs are held.
"""

import datetime as dt

import pytest
import sqlalchemy as sa

from bot import lifecycle
from bot.lifecycle import Action, Desired, Phase
from bot.store import Store, Workspace, claim, release, utcnow


def facts(**overrides):
    base = dict(
        project_id=1,
        mr_iid=7,
        project_path="g/app",
        project_http_url="http://gl/g/app.git",
        mr_url="http://gl/g/app/-/merge_requests/7",
        title="Add thing",
        state="opened",
        head_sha="a" * 40,
        draft=False,
        is_fork=False,
        source_branch="feature",
        updated_at=dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC),
    )
    return lifecycle.MergeRequestFacts(**{**base, **overrides})


def add(store, **overrides):
    with store.session() as s:
        ws = lifecycle.new_workspace(facts(**overrides))
        s.add(ws)
    return ws


def test_migrating_twice_is_harmless(store):
    store.migrate()
    with store.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Workspace)) == 0


def test_redeemed_tickets_migrate_up_from_0004_and_back_down(database_url):
    from alembic import command

    store = Store(database_url)
    config = store.alembic_config()

    def tables():
        return set(sa.inspect(store.engine).get_table_names())

    def run(step, revision):
        with store.engine.begin() as conn:
            config.attributes["connection"] = conn
            step(config, revision)

    run(command.upgrade, "0004")
    assert "workspaces" in tables() and "redeemed_tickets" not in tables()
    run(command.upgrade, "0005")
    assert store.redeem_ticket("t", utcnow())
    assert not store.redeem_ticket("t", utcnow())
    run(command.downgrade, "0004")
    assert "redeemed_tickets" not in tables() and "workspaces" in tables()
    store.dispose()


def test_a_due_row_is_claimed_by_exactly_one_worker(store):
    add(store)
    with store.session() as s:
        first = claim(s, "w1", lease=60)
    with store.session() as s:
        second = claim(s, "w2", lease=60)
    assert [w.mr_iid for w in first] == [7]
    assert second == []


def test_a_worker_claims_again_what_a_failed_release_left_it_holding(store):
    """The store went away mid-pass, so the release never happened: the same
    worker takes the row back at once, and nobody else before the lease ends."""
    add(store)
    with store.session() as s:
        assert claim(s, "w1", lease=60)
    with store.session() as s:
        assert claim(s, "w2", lease=60) == []
    with store.session() as s:
        again = claim(s, "w1", lease=60)
    assert [w.mr_iid for w in again] == [7]


def test_an_expired_lease_lets_another_worker_take_over(store):
    add(store)
    with store.session() as s:
        assert claim(s, "dead", lease=60)
        s.execute(
            sa.update(Workspace).values(
                claimed_until=utcnow() - dt.timedelta(seconds=1)
            )
        )
    with store.session() as s:
        taken = claim(s, "alive", lease=60)
    assert len(taken) == 1
    with store.session() as s:
        assert s.scalar(sa.select(Workspace.claimed_by)) == "alive"


def test_release_settles_a_row_nobody_touched(store):
    add(store)
    with store.session() as s:
        (ws,) = claim(s, "w", lease=60)
    with store.session() as s:
        assert release(s, ws, "w", ws.version, None, phase=Phase.READY)
    with store.session() as s:
        row = s.scalars(sa.select(Workspace)).one()
        assert (row.due_at, row.claimed_by, row.phase) == (None, None, "ready")


def test_a_row_changed_during_a_pass_stays_due(store):
    add(store)
    with store.session() as s:
        (ws,) = claim(s, "w", lease=60)
    with store.session() as s:  # an event arrives while the worker is busy
        row = s.scalars(sa.select(Workspace)).one()
        assert lifecycle.observe(
            row, facts(state="merged", updated_at=utcnow().replace(tzinfo=dt.UTC))
        )
    with store.session() as s:
        release(s, ws, "w", ws.version, None, phase=Phase.READY)
    with store.session() as s:
        row = s.scalars(sa.select(Workspace)).one()
        assert row.due_at is not None
        assert row.desired == Desired.GONE
        assert row.claimed_by is None


def test_a_worker_that_lost_its_claim_writes_nothing(store):
    add(store)
    with store.session() as s:
        (ws,) = claim(s, "slow", lease=60)
        s.execute(sa.update(Workspace).values(claimed_by="other"))
    with store.session() as s:
        assert not release(s, ws, "slow", ws.version, None, phase=Phase.FAILED)
    with store.session() as s:
        assert s.scalar(sa.select(Workspace.phase)) == "pending"


def test_older_facts_do_not_undo_newer_ones():
    ws = lifecycle.new_workspace(facts(state="merged"))
    older = facts(state="opened", updated_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    assert not lifecycle.observe(ws, older)
    assert ws.desired == Desired.GONE


def test_unchanged_facts_do_not_make_the_row_due_again():
    ws = lifecycle.new_workspace(facts())
    ws.due_at, version = None, ws.version
    assert not lifecycle.observe(ws, facts())
    assert (ws.due_at, ws.version) == (None, version)


def test_a_reopened_merge_request_gets_a_fresh_generation():
    ws = lifecycle.new_workspace(facts())
    ws.running_sha = "a" * 40
    later = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    assert lifecycle.observe(ws, facts(state="closed", updated_at=later))
    assert lifecycle.observe(
        ws, facts(state="opened", updated_at=later + dt.timedelta(1))
    )
    assert ws.generation == 2
    assert ws.desired == Desired.RUNNING
    assert ws.running_sha is None


def test_a_push_changes_the_head_but_not_the_running_commit():
    ws = lifecycle.new_workspace(facts())
    ws.running_sha = "a" * 40
    assert lifecycle.observe(
        ws, facts(head_sha="b" * 40, updated_at=utcnow().replace(tzinfo=dt.UTC))
    )
    assert (ws.head_sha, ws.running_sha) == ("b" * 40, "a" * 40)


@pytest.mark.parametrize(
    ("overrides", "start_drafts", "action", "phase"),
    [
        ({}, True, Action.RUN, Phase.PENDING),
        ({"state": "merged"}, True, Action.REMOVE, Phase.PENDING),
        ({"is_fork": True}, True, Action.HOLD, Phase.AWAITING_APPROVAL),
        ({"draft": True}, False, Action.HOLD, Phase.DRAFT),
        ({"draft": True}, True, Action.RUN, Phase.PENDING),
    ],
)
def test_plan(overrides, start_drafts, action, phase):
    ws = lifecycle.new_workspace(facts(**overrides))
    p = lifecycle.plan(ws, start_drafts=start_drafts)
    assert p.action == action
    assert p.phase == phase


def test_an_approved_fork_runs_the_approved_commit_not_the_newest():
    ws = lifecycle.new_workspace(facts(is_fork=True, head_sha="c" * 40))
    ws.approved_sha = "b" * 40
    assert lifecycle.plan(ws, start_drafts=True).sha == "b" * 40
