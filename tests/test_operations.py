"""What an operator relies on: health, metrics, logs, webhook registration,
and riding out GitLab's rate limits and outages.

Cases: /healthz answers while GitLab is down, /readyz does not, nor before the
schema is migrated; /metrics counts deliveries and workspaces by phase; JSON
logs carry structured fields and never a secret, even inside an exception;
``rwbot hooks install`` registers one hook with the right events and updates it
on a second run; GitLab answering a quarter of all calls for several MRs with
429 and 503 (with Retry-After) and 500 and 502 ends with the right single
comment on each, and no call refused with a Retry-After is asked again sooner
(judged from the double's arrival times); the whole flow works
on PostgreSQL as well; an idle reconciler looks again as soon as it is woken,
and stops when asked even in a long pause.
"""

import io
import json
import logging
import threading

import pytest

from bot import logs
from bot.cli import install_hook
from bot.gitlab import HOOK_EVENTS, Client
from bot.reconciler import Reconciler
from bot.settings import Settings
from bot.store import Store
from tests import harness, services
from tests.gitlab_double import DEVELOPER


@pytest.fixture
def project(stack):
    p = stack.gitlab.add_project("team/app")
    author = stack.gitlab.add_user("author")
    stack.gitlab.set_member(p, author, DEVELOPER)
    return p


def test_healthz_answers_while_gitlab_is_down_but_readyz_does_not(stack):
    client = stack.app.test_client()
    assert client.get("/readyz").status_code == 200
    stack.gitlab.set_unreachable(True)
    try:
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and "gitlab" in r.json["problems"]
    finally:
        stack.gitlab.set_unreachable(False)


def test_readyz_fails_until_the_schema_is_migrated(stack, tmp_path):
    from bot.app import create_app

    store = Store(f"sqlite:///{tmp_path}/empty.db")
    app = create_app(
        stack.settings, store=store, gitlab=stack.client, runtime=stack.runtime
    )
    r = app.test_client().get("/readyz")
    assert r.status_code == 503 and "schema" in r.json["problems"]["store"]
    store.migrate()
    assert app.test_client().get("/readyz").status_code == 200


def test_metrics_count_deliveries_and_workspaces_by_phase(stack, project):
    mr = stack.gitlab.open_mr(project, "feature", {"a.txt": "a\n"})
    stack.deliver(stack.gitlab.mr_hook(mr, "open"))
    stack.settle()
    text = stack.app.test_client().get("/metrics").get_data(as_text=True)
    assert (
        'rwbot_webhook_deliveries_total{event="Merge Request Hook",outcome="applied"}'
        in text
    )
    assert 'rwbot_workspaces{phase="ready"} 1.0' in text
    assert "rwbot_reconcile_seconds_count" in text


def test_json_logs_have_fields_and_never_a_secret():
    stream = io.StringIO()
    logs.configure("json", "INFO", ["s3cr3t-token"])
    logging.getLogger().handlers[0].stream = stream
    log = logging.getLogger("bot.test")
    log.info("webhook recorded", extra={"delivery": "d-1", "note": "has s3cr3t-token"})
    log.info("counted %d things in %.1f s", 3, 1.5)
    try:
        raise RuntimeError("request failed with token s3cr3t-token")
    except RuntimeError:
        log.exception("gitlab call failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line]
    assert lines[0]["message"] == "webhook recorded" and lines[0]["delivery"] == "d-1"
    assert lines[1]["message"] == "counted 3 things in 1.5 s"
    assert "s3cr3t-token" not in stream.getvalue()
    assert "[MASKED]" in lines[0]["note"] and "[MASKED]" in lines[2]["message"]


def test_hooks_install_registers_one_hook_and_updates_it(stack, project, capsys):
    assert install_hook(stack.settings, "team/app") == 0
    assert install_hook(stack.settings, str(project["id"])) == 0
    (hook,) = stack.gitlab.hooks(project)
    assert hook["url"] == f"{stack.url}/webhooks/gitlab"
    for name, value in HOOK_EVENTS.items():
        assert hook[name] is value, name
    assert hook["token"] == harness.WEBHOOK_SECRET
    out = capsys.readouterr().out
    assert "registered webhook" in out and "updated webhook" in out


MRS = 4


def test_rate_limits_and_server_errors_end_in_one_right_comment(stack, project):
    mrs = [
        stack.gitlab.open_mr(project, f"feature-{i}", {f"{i}.txt": f"{i}\n"})
        for i in range(MRS)
    ]
    for mr in mrs:
        stack.deliver(stack.gitlab.mr_hook(mr, "open"))
    stack.gitlab.clear_log()
    # A quarter of all API calls fail, taking turns: 429 and 503 with
    # Retry-After (1 s, twenty times the bot's own backoff base), 500 and 502
    # without it.
    stack.gitlab.inject_faults(
        (429, 502, 503, 500), rate=0.25, retry_after=1, paths=r"^/api/v4/", seed=7
    )

    def all_ready() -> bool:
        stack.reconciler.run_once()
        return all(any("ready" in n["body"] for n in stack.bot_notes(mr)) for mr in mrs)

    services.wait_for(all_ready, timeout=120, what="the comments despite faults")
    stack.gitlab.clear_faults()
    stack.settle()

    for mr in mrs:
        assert "ready" in stack.comment(mr)  # exactly one, and right
    log = stack.gitlab.calls(path_regex=r"^/api/v4/")
    asked_to_wait = [r for r in log if r.faulted and r.retry_after]
    assert {r.status for r in log if r.faulted} == {429, 500, 502, 503}
    assert any(r.status == 429 for r in asked_to_wait)
    retried = 0
    for refused in asked_to_wait:
        again = [r.at - refused.at for r in log if same_call(r, refused)]
        if again:
            retried += 1
            assert min(again) >= refused.retry_after, (refused, min(again))
    assert retried >= 3  # the check above is not vacuous


def same_call(later, refused):
    """``later`` asks again what ``refused`` asked. Under an MR's path that is
    the same method and path (a comment's text may have moved on); elsewhere,
    e.g. a project's deployments, which every MR posts to, also the same body."""
    if later.at <= refused.at:
        return False
    same = (later.method, later.path, later.query) == (
        refused.method,
        refused.path,
        refused.query,
    )
    if "/merge_requests/" in refused.path:
        return same
    return same and later.json == refused.json


def test_the_flow_works_on_postgresql(docker_host, tmp_path, postgres_url):
    stack = harness.Stack(
        docker_host, tmp_path, database_url=services.create_database(postgres_url)
    )
    try:
        p = stack.gitlab.add_project("team/app")
        author = stack.gitlab.add_user("author")
        mr = stack.gitlab.open_mr(p, "feature", {"a.txt": "a\n"}, author=author)
        stack.deliver(stack.gitlab.mr_hook(mr, "open"))
        stack.settle()
        assert "ready" in stack.comment(mr)
        stack.gitlab.merge(mr)
        stack.deliver(stack.gitlab.mr_hook(mr, "merge"))
        stack.settle()
        assert stack.containers(mr) == []
    finally:
        stack.close()


def test_an_unexpected_error_gives_the_row_back_with_backoff(stack, project):
    mr = stack.gitlab.open_mr(project, "feature", {"a.txt": "a\n"})
    stack.deliver(stack.gitlab.mr_hook(mr, "open"))

    class Broken:
        """A runtime seam with a bug in it."""

        def status(self, key):
            raise RuntimeError("a bug")

    real = stack.reconciler.runtime
    stack.reconciler.runtime = Broken()
    assert stack.reconciler.run_once() == 1  # no exception escapes
    row = stack.row(mr)
    assert (row.claimed_by, row.attempts) == (None, 1)
    assert row.due_at > harness.utcnow()

    stack.reconciler.runtime = real
    stack.make_due()
    stack.settle()
    assert "ready" in stack.comment(mr)


class CountingReconciler(Reconciler):
    """Finds nothing to do, and counts how often it looked."""

    looks = 0

    def resync(self):
        pass

    def run_once(self, limit=10):
        self.looks += 1
        return 0


def test_an_idle_reconciler_looks_again_as_soon_as_it_is_woken(tmp_path):
    settings = Settings(
        gitlab_url="http://127.0.0.1:9",
        gitlab_token="tok",
        webhook_secret="s3cret",
        public_url="http://bot.test",
        database_url=f"sqlite:///{tmp_path}/db.sqlite",
    )
    reconciler = CountingReconciler(
        settings, Store(settings.database_url), Client(settings), runtime=None
    )
    stop, wake = threading.Event(), threading.Event()
    # An hour's pause: only the wake-up can bring the next look within the test.
    worker = threading.Thread(
        target=reconciler.run_forever, args=(stop, 3600.0, wake), daemon=True
    )
    worker.start()
    try:
        services.wait_for(lambda: reconciler.looks == 1, what="the first look")
        wake.set()
        services.wait_for(lambda: reconciler.looks == 2, what="a look when woken")
        assert not wake.is_set()  # cleared before looking, ready for the next
        wake.set()
        services.wait_for(lambda: reconciler.looks == 3, what="a look when woken")
    finally:
        stop.set()
        wake.set()
        worker.join(timeout=30)
    assert not worker.is_alive()
