"""REST handlers for MR notes, discussions and award emoji on notes.

docs.gitlab.com/api/notes, /api/discussions, /api/emoji_reactions. Notes made
through the API are authored by the token's user; only the author may edit a
note (403 otherwise), the author or a Maintainer may delete it.
"""

from __future__ import annotations

import re

from flask import Response, jsonify

from tests.gitlab_double import shapes
from tests.gitlab_double.api import (
    ApiError,
    Call,
    bad_param,
    created,
    forbidden,
    no_content,
    not_found,
    paginate,
    route,
    sort_records,
)
from tests.gitlab_double.rest_core import find_mr
from tests.gitlab_double.state import (
    GUEST,
    MAINTAINER,
    AwardEmoji,
    Discussion,
    Note,
)

NOTES = "projects/{project}/merge_requests/{merge_request_iid}/notes"
DISCUSSIONS = "projects/{project}/merge_requests/{merge_request_iid}/discussions"
EMOJI_NAME = re.compile(r"^[a-z0-9_+-]+$")


def find_note(call: Call) -> Note:
    mr = find_mr(call)
    note = call.store.notes.get(call.int_arg("note_id"))
    if note is None or (note.project_id, note.mr_iid) != (mr.project_id, mr.iid):
        raise not_found("Note Not Found")
    return note


def find_discussion(call: Call) -> Discussion:
    mr = find_mr(call)
    discussion = call.store.discussions.get(call.args["discussion_id"])
    if discussion is None or discussion.mr_iid != mr.iid:
        raise not_found()
    if discussion.project_id != mr.project_id:
        raise not_found()
    return discussion


def note_body(call: Call) -> str:
    body = call.string("body", required=True) or ""
    if not body.strip():
        raise ApiError(400, {"message": {"note": ["can't be blank"]}})
    return body


@route("GET", NOTES)
def list_notes(call: Call) -> Response:
    notes = call.store.mr_notes(find_mr(call))
    ordered = sort_records(call, notes, {"created_at", "updated_at"}, "created_at")
    return paginate(call, [shapes.note(call.store, n) for n in ordered])


@route("POST", NOTES)
def create_note(call: Call) -> Response:
    mr = find_mr(call)
    call.project(min_level=GUEST)
    body = note_body(call)
    internal = bool(call.boolean("internal", False))
    note = call.store.add_note(mr, call.user.id, body, internal=internal)
    return created(shapes.note(call.store, note))


@route("GET", NOTES + "/{note_id}")
def get_note(call: Call) -> Response:
    return jsonify(shapes.note(call.store, find_note(call)))


@route("PUT", NOTES + "/{note_id}")
def update_note(call: Call) -> Response:
    note = find_note(call)
    body = note_body(call)
    if note.author_id != call.user.id:
        raise forbidden()

    note.body = body
    note.updated_at = call.store.now()
    return jsonify(shapes.note(call.store, note))


@route("DELETE", NOTES + "/{note_id}")
def delete_note(call: Call) -> Response:
    note = find_note(call)
    project = call.store.projects[note.project_id]
    is_maintainer = call.store.access_level(project, call.user) >= MAINTAINER
    if note.author_id != call.user.id and not is_maintainer:
        raise forbidden()

    call.store.delete_note(note)
    return no_content()


@route("GET", DISCUSSIONS)
def list_discussions(call: Call) -> Response:
    mr = find_mr(call)
    rows = [
        shapes.discussion(call.store, d)
        for d in call.store.discussions.values()
        if (d.project_id, d.mr_iid) == (mr.project_id, mr.iid)
    ]
    rows.sort(key=lambda d: d["notes"][0]["id"])
    return paginate(call, rows)


@route("POST", DISCUSSIONS)
def create_discussion(call: Call) -> Response:
    mr = find_mr(call)
    call.project(min_level=GUEST)
    note = call.store.add_note(mr, call.user.id, note_body(call), thread=True)
    discussion = call.store.discussions[note.discussion_id]
    return created(shapes.discussion(call.store, discussion))


@route("GET", DISCUSSIONS + "/{discussion_id}")
def get_discussion(call: Call) -> Response:
    return jsonify(shapes.discussion(call.store, find_discussion(call)))


@route("POST", DISCUSSIONS + "/{discussion_id}/notes")
def reply_to_discussion(call: Call) -> Response:
    discussion = find_discussion(call)
    mr = find_mr(call)
    call.project(min_level=GUEST)
    note = call.store.add_note(mr, call.user.id, note_body(call), discussion=discussion)
    return created(shapes.note(call.store, note))


@route("GET", NOTES + "/{note_id}/award_emoji")
def list_note_emoji(call: Call) -> Response:
    note = find_note(call)
    rows = [
        shapes.award_emoji(call.store, e)
        for e in call.store.emojis.values()
        if e.note_id == note.id
    ]
    return paginate(call, rows)


@route("POST", NOTES + "/{note_id}/award_emoji")
def award_note_emoji(call: Call) -> Response:
    note = find_note(call)
    name = call.string("name", required=True) or ""
    if not EMOJI_NAME.match(name):
        raise bad_param("name")
    taken = any(
        e.note_id == note.id and e.name == name and e.user_id == call.user.id
        for e in call.store.emojis.values()
    )
    if taken:
        # GitLab answers a duplicate award with 404 and the validation message.
        raise not_found("Award Emoji Name has already been taken")

    emoji = AwardEmoji(
        call.store.next_id(), note.id, name, call.user.id, call.store.now()
    )
    call.store.emojis[emoji.id] = emoji
    return created(shapes.award_emoji(call.store, emoji))


@route("GET", NOTES + "/{note_id}/award_emoji/{award_id}")
def get_note_emoji(call: Call) -> Response:
    note = find_note(call)
    emoji = call.store.emojis.get(call.int_arg("award_id"))
    if emoji is None or emoji.note_id != note.id:
        raise not_found("Award Emoji Not Found")
    return jsonify(shapes.award_emoji(call.store, emoji))


@route("DELETE", NOTES + "/{note_id}/award_emoji/{award_id}")
def delete_note_emoji(call: Call) -> Response:
    note = find_note(call)
    emoji = call.store.emojis.get(call.int_arg("award_id"))
    if emoji is None or emoji.note_id != note.id:
        raise not_found("Award Emoji Not Found")
    if emoji.user_id != call.user.id:
        raise forbidden()

    del call.store.emojis[emoji.id]
    return no_content()
