#!/bin/sh
# Clone step of a review workspace (runs as the init container).
#
# The layout matches bot.git.fetch_checkout (the Docker runtime's): branch
# "review" at the MR's commit, the MR head as refs/remotes/origin/mr-head, and a
# repository shared through a group. The credential is handed to git by
# GIT_ASKPASS from a mounted file, so it is never in argv, the environment, the
# remote URL or .git/config. The clone is made next to its destination and
# renamed into place, so a half-done clone is never taken for a finished one
# when the pod restarts.
set -eu

dest=$RWBOT_CHECKOUT_DIR
if [ -d "$dest/.git" ]; then
    echo "checkout already present in $dest"
    exit 0
fi
if [ -e "$dest" ] && ! rmdir "$dest" 2>/dev/null; then
    echo "$dest exists but is not a git checkout; not cloning over it" >&2
    exit 1
fi

tmp="$dest.rwbot-clone"
rm -rf "$tmp"
mkdir -p "$tmp"
git init -q "$tmp"
git -C "$tmp" remote add origin "$RWBOT_SOURCE_URL"
git -C "$tmp" config core.sharedRepository group
git -C "$tmp" -c credential.helper= fetch -q --no-tags origin \
    "+$RWBOT_SOURCE_REF:refs/remotes/origin/mr-head"

target=${RWBOT_SOURCE_SHA:-refs/remotes/origin/mr-head}
if ! git -C "$tmp" checkout -q --no-track -B review "$target" 2>/dev/null; then
    echo "commit $target is no longer part of the merge request" >&2
    exit 1
fi
mv "$tmp" "$dest"
echo "cloned $RWBOT_SOURCE_REF into $dest"
