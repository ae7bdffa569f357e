"""The clone credential: the one secret the bot puts in a workspace's namespace.

The init container clones the checkout over HTTP and needs a credential to do
so. It gets a project deploy token minted for this workspace alone, never the
bot's own token: ``read_repository`` only, and expiring within the hour (longer
only when the ready timeout is), so that a credential a pod or a person in the
namespace might read is worth little and soon worth nothing. It lives in the
workspace's Secret; its id is kept in the Deployment's annotation, which is
enough to revoke it and nothing more.

It is revoked, and the Secret deleted, once the clone has finished, when the
workspace fails, and when the workspace is removed; a stopped workspace whose
clone had not finished gets a fresh token when it starts again, and the old one
is revoked. A token GitLab will not revoke now is logged, not raised: it still
expires.

Minting a token and recording it in the Deployment are two steps, and a worker
killed between them leaves a token nothing records. Every token of a workspace
has the same name (:func:`token_name`), and one worker at a time works on a
workspace (:func:`bot.store.claim`), so before minting, the project's tokens of
that name that the Deployment does not record are revoked as leftovers, and
when the workspace's namespace is deleted, all of them are. A worker killed
before it made the namespace leaves nothing to delete: its token is revoked
when the workspace is made after all, and otherwise expires. A list GitLab will
not give is logged like a refused revocation: the leftovers still expire.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import TYPE_CHECKING, Any, Protocol

from bot.errors import BotError
from bot.runtime.kube import cluster, manifests

if TYPE_CHECKING:
    from bot.gitlab import CloneToken

log = logging.getLogger(__name__)

#: The Deployment's annotation with the id of the clone's deploy token.
CLONE_TOKEN = "rwbot.clone-token"  # noqa: S105 - an annotation name, not a token
#: How long a clone token lives at least; longer when the ready timeout is.
CLONE_TOKEN_LIFETIME = 3600.0


class CloneTokens(Protocol):
    """Short-lived read-only credentials for a project (:class:`bot.gitlab.Client`)."""

    def create_clone_token(
        self, project: int | str, name: str, expires_at: dt.datetime
    ) -> CloneToken: ...

    def revoke_clone_token(self, project: int | str, token_id: int) -> None: ...

    def clone_token_ids(self, project: int | str, name: str) -> list[int]: ...


class Credentials:
    """Mints, hands over and revokes the workspaces' clone tokens."""

    def __init__(
        self, tokens: CloneTokens, kube: cluster.Cluster, ready_timeout: float
    ) -> None:
        self._tokens = tokens
        self._cluster = kube
        self._ready_timeout = ready_timeout

    def mint(
        self,
        project: str,
        namespace: str,
        deployment: dict[str, Any] | None = None,
    ) -> CloneToken:
        """A fresh clone token for ``namespace``, once the leftovers of earlier
        attempts are revoked: every token of its name but the one
        ``deployment`` records."""
        self._revoke_leftovers(project, namespace, deployment)

        # GitLab judges the expiry by the wall clock, whatever ours says.
        lifetime = max(CLONE_TOKEN_LIFETIME, self._ready_timeout)
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lifetime)
        token = self._tokens.create_clone_token(
            project, token_name(namespace), expires.replace(microsecond=0)
        )
        log.info(
            "clone token created", extra={"namespace": namespace, "token_id": token.id}
        )
        return token

    def revoke(self, project: int | str, token_id: int) -> None:
        """Revoke a clone token; one GitLab will not revoke now still expires
        within the hour, so that is logged rather than raised."""
        try:
            self._tokens.revoke_clone_token(project, token_id)
        except BotError as err:
            log.warning(
                "clone token not revoked",
                extra={
                    "project": project,
                    "token_id": token_id,
                    "error": str(err),
                },
            )

    def revoke_annotated(self, deployment: dict[str, Any]) -> None:
        record = token_of(deployment)
        if record is not None:
            self.revoke(*record)

    def _revoke_leftovers(
        self,
        project: int | str,
        namespace: str,
        deployment: dict[str, Any] | None = None,
    ) -> None:
        """Revoke the clone tokens of ``namespace`` in ``project`` that
        ``deployment`` does not record: those a killed worker minted."""
        record = None if deployment is None else token_of(deployment)
        keep = None if record is None else record[1]
        try:
            found = self._tokens.clone_token_ids(project, token_name(namespace))
        except BotError as err:
            log.warning(
                "clone tokens not listed",
                extra={"project": project, "namespace": namespace, "error": str(err)},
            )
            return

        for token_id in found:
            if token_id == keep:
                continue
            log.info(
                "leftover clone token found",
                extra={"namespace": namespace, "token_id": token_id},
            )
            self.revoke(project, token_id)

    def retire(
        self, project: int | str, namespace: str, deployment: dict[str, Any] | None
    ) -> None:
        """The workspace is being removed: revoke the token ``deployment``
        records and every other one of its name."""
        if deployment is not None:
            self.revoke_annotated(deployment)
        self._revoke_leftovers(project, namespace)

    def hand_over(
        self,
        project: str,
        namespace: str,
        deployment: dict[str, Any],
        credential: CloneToken,
    ) -> None:
        """Point the Deployment at ``credential`` and revoke the one it had."""
        record = token_record(project, credential)
        self._cluster.patch_deployment(
            namespace, {"metadata": {"annotations": {CLONE_TOKEN: record}}}
        )
        self.revoke_annotated(deployment)

    def forget(
        self,
        namespace: str,
        deployment: dict[str, Any],
        *,
        cloned: bool,
    ) -> None:
        """The clone is done, or will not be: delete its credential, revoke the
        token, and remember that we did."""
        self._cluster.delete_secret(namespace)
        self.revoke_annotated(deployment)
        annotations: dict[str, str | None] = {CLONE_TOKEN: None}
        if cloned:
            annotations[manifests.CHECKOUT] = "done"
        self._cluster.patch_deployment(
            namespace, {"metadata": {"annotations": annotations}}
        )
        log.info(
            "clone credential deleted", extra={"namespace": namespace, "cloned": cloned}
        )


def token_name(namespace: str) -> str:
    """The name of every clone token minted for the workspace in ``namespace``,
    by which the ones nothing records are found again."""
    return f"rwbot {namespace}"


def token_record(project: str, credential: CloneToken) -> str:
    """The annotation naming a clone token: enough to revoke it, nothing more."""
    return json.dumps({"project": project, "id": credential.id})


def token_of(deployment: dict[str, Any]) -> tuple[str, int] | None:
    """The project and id of the clone token the Deployment was handed."""
    try:
        record = json.loads(cluster.annotation(deployment, CLONE_TOKEN) or "null")
        return str(record["project"]), int(record["id"])
    except (TypeError, KeyError, ValueError):
        return None
