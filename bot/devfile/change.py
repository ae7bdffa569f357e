"""Did the devfile change between two commits? For ``/workspace sync``.

``sync`` moves the checkout to a new commit, but the container keeps the image,
limits and volumes the old commit's devfile gave it; only a rebuild applies a
new devfile. The caller lists the devfile candidates at each commit with

    git ls-tree -z <sha> -- .devfile.yaml .devfile.yml .devfile/

(in the checkout, which holds both commits after a sync), and these pure
functions say whether the devfile the bot would pick is another file or has
other content.
"""

from __future__ import annotations

from collections.abc import Mapping

from bot.devfile import FOLDER, PATHS, find

#: The ``git ls-tree`` pathspecs that list every file :func:`find` may pick.
LS_TREE_PATHS = (*PATHS, f"{FOLDER}/")
#: Regular files only: the bot does not follow symbolic links (120000) to a
#: devfile, nor look into folders or submodules.
_FILE_MODES = frozenset({"100644", "100755"})


def blobs(ls_tree_z: str) -> dict[str, str]:
    """``{path: blob id}`` of the regular files in ``git ls-tree -z`` output."""
    result = {}
    for entry in ls_tree_z.split("\0"):
        meta, tab, path = entry.partition("\t")
        # A runtime's exec may mix stderr in ahead of the first entry.
        fields = meta.rsplit("\n", 1)[-1].split(" ")
        if not tab or len(fields) != 3:
            continue
        mode, kind, blob = fields
        if mode in _FILE_MODES and kind == "blob":
            result[path] = blob
    return result


def changed(before: Mapping[str, str], after: Mapping[str, str]) -> bool:
    """Whether the devfile in use differs between two commits' candidates
    (``{path: blob id}``, e.g. from :func:`blobs`): added, removed, another
    file picked, or the same file with other content."""
    old, new = find(before), find(after)
    if old != new:
        return True
    if old is None:
        return False

    return before[old] != after[old]
