"""Git smart HTTP, served by the real ``git http-backend`` run as a CGI program.

Clients authenticate with HTTP Basic; the password is the bot's token or an
OAuth access token (GitLab's ``oauth2:<token>`` convention; the user name is
not checked), or a project deploy token with its own username
(:mod:`.deploy_tokens`). Without valid credentials the answer is 401 with
``WWW-Authenticate: Basic realm="GitLab"``, so git asks its credential helper.
Reading needs Reporter on a private project, pushing needs Developer; OAuth
tokens also need a repository scope. A push to an MR's source branch moves
``refs/merge-requests/<iid>/head`` like GitLab does.

The request body is read whole (git sends it before reading the answer), fed to
the CGI's stdin from a thread, and the CGI's stdout is streamed back.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import IO

from flask import Blueprint, Response, request

from tests.gitlab_double import deploy_tokens
from tests.gitlab_double.api import store
from tests.gitlab_double.repos import git_env
from tests.gitlab_double.state import DEVELOPER, REPORTER, Project, Store, User

git_http = Blueprint("git_http", __name__)

READ_SCOPES = {"api", "read_api", "read_repository", "write_repository"}
WRITE_SCOPES = {"api", "write_repository"}
SERVICES = {"git-upload-pack", "git-receive-pack"}


def denied() -> Response:
    return Response(
        "HTTP Basic: Access denied.\n",
        status=401,
        headers={"WWW-Authenticate": 'Basic realm="GitLab"'},
        mimetype="text/plain",
    )


def credentials_user(data: Store, write: bool) -> User | None:
    """The user whose token is the Basic password, if it may do this at all."""
    auth = request.authorization
    if auth is None or auth.type != "basic" or not auth.password:
        return None
    token = data.tokens.get(auth.password)
    if token is None or token.revoked:
        return None
    if token.expires_at and token.expires_at <= data.now():
        return None
    if not set(token.scopes) & (WRITE_SCOPES if write else READ_SCOPES):
        return None
    user = data.users[token.user_id]
    return user if user.state == "active" else None


def access_problem(data: Store, project: Project, user: User, write: bool) -> str:
    """Why ``user`` may not read (or write) the repository; empty when allowed."""
    level = data.access_level(project, user)
    if level == 0 and project.visibility == "private":
        return "not found"
    if write and level < DEVELOPER:
        return "You are not allowed to push code to this project."
    if project.visibility == "private" and level < REPORTER:
        return "You are not allowed to download code from this project."
    return ""


@git_http.route("/<path:repo>.git/info/refs")
def info_refs(repo: str) -> Response:
    service = request.args.get("service", "")
    return serve(repo, "info/refs", write=service == "git-receive-pack")


@git_http.route("/<path:repo>.git/<service>", methods=["POST"])
def rpc(repo: str, service: str) -> Response:
    if service not in SERVICES:
        return Response("Not Found\n", status=404, mimetype="text/plain")
    return serve(repo, service, write=service == "git-receive-pack")


def serve(repo: str, tail: str, *, write: bool) -> Response:
    data = store()
    push = tail == "git-receive-pack"
    with data.lock:
        project = data.project_by_ref(repo)
        deploy = deploy_tokens.git_reader(data, project, write)
        if deploy is not None and project is not None:
            request.environ["gitlab_double.user"] = deploy
            after = functools.partial(data.after_push, project) if push else None
            return run_backend(data, repo, tail, deploy, after)
        user = credentials_user(data, write)
        if user is None:
            return denied()
        request.environ["gitlab_double.user"] = user.username
        problem = access_problem(data, project, user, write) if project else ""
        if project is None or problem == "not found":
            return Response(
                "The project you were looking for could not be found or you "
                "don't have permission to view it.\n",
                status=404,
                mimetype="text/plain",
            )
        if problem:
            return Response(problem + "\n", status=403, mimetype="text/plain")

    pushed = project
    after = (lambda: data.after_push(pushed)) if push else None
    return run_backend(data, repo, tail, user.username, after)


def run_backend(
    data: Store,
    repo: str,
    tail: str,
    remote_user: str,
    after: Callable[[], None] | None,
) -> Response:
    """Run ``git http-backend`` for this request and relay its answer.

    With ``after`` (a push) the answer is buffered and ``after`` runs before it
    is sent, so when ``git push`` returns the MR heads have already moved.
    """
    body = request.get_data(cache=False)
    env = git_env()
    env.update(
        GIT_PROJECT_ROOT=str(data.repos.root),
        GIT_HTTP_EXPORT_ALL="1",
        PATH_INFO=f"/{repo}.git/{tail}",
        QUERY_STRING=request.query_string.decode(),
        REQUEST_METHOD=request.method,
        CONTENT_TYPE=request.headers.get("Content-Type", ""),
        CONTENT_LENGTH=str(len(body)),
        REMOTE_USER=remote_user,
        REMOTE_ADDR=request.remote_addr or "127.0.0.1",
    )
    for header in ("Git-Protocol", "Content-Encoding"):
        if header in request.headers:
            env["HTTP_" + header.upper().replace("-", "_")] = request.headers[header]

    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed when relay() ends
    process = subprocess.Popen(
        ["git", "http-backend"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
    )
    assert process.stdin is not None and process.stdout is not None
    threading.Thread(target=feed, args=(process.stdin, body), daemon=True).start()

    status, headers = read_cgi_headers(process.stdout)
    if after is not None:
        output = process.stdout.read()
        process.wait()
        stderr.close()
        after()
        return Response(output, status=status, headers=headers)

    def relay() -> Iterator[bytes]:
        assert process.stdout is not None
        try:
            while chunk := process.stdout.read(65536):
                yield chunk
        finally:
            process.stdout.close()
            process.wait()
            stderr.close()

    return Response(relay(), status=status, headers=headers)


def feed(pipe: IO[bytes], body: bytes) -> None:
    """Write the request body to the CGI; a thread, so stdout never blocks it."""
    try:
        pipe.write(body)
    except BrokenPipeError:
        pass  # the backend answered early (an error); its answer says why
    finally:
        pipe.close()


def read_cgi_headers(stdout: IO[bytes]) -> tuple[int, list[tuple[str, str]]]:
    """Parse the CGI header block; ``Status: 404 Not Found`` sets the status."""
    status = 200
    headers: list[tuple[str, str]] = []
    while True:
        line = stdout.readline().decode("latin-1").rstrip("\r\n")
        if not line:
            break
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.strip().split()[0])
        else:
            headers.append((name.strip(), value.strip()))
    return status, headers
