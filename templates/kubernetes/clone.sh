#!/bin/sh
# Clone step of a review workspace (runs as the init container).
#
# The credential is handed to git by GIT_ASKPASS from a mounted file, so it is
# never in argv, the environment, the remote URL or .git/config. The clone is
# made next to its destination and renamed into place, so a half-done clone is
# never mistaken for a finished one when the pod restarts.
set -eu

dest=$RWBOT_CHECKOUT_DIR
if [ -d "$dest/.git" ]; then
    echo "checkout already present in $dest"
    exit 0
fi

tmp="$dest.rwbot-clone"
rm -rf "$tmp"
mkdir -p "$tmp"
git init -q "$tmp"
git -C "$tmp" remote add origin "$RWBOT_SOURCE_URL"
git -C "$tmp" -c credential.helper= fetch -q --no-tags origin \
    "+$RWBOT_SOURCE_REF:refs/remotes/origin/$RWBOT_BRANCH"

start="refs/remotes/origin/$RWBOT_BRANCH"
if [ -n "${RWBOT_SOURCE_SHA:-}" ] &&
    git -C "$tmp" cat-file -e "$RWBOT_SOURCE_SHA^{commit}" 2>/dev/null; then
    start=$RWBOT_SOURCE_SHA
fi
git -C "$tmp" checkout -q -B "$RWBOT_BRANCH" "$start"
git -C "$tmp" branch -q --set-upstream-to="origin/$RWBOT_BRANCH" "$RWBOT_BRANCH"
mv "$tmp" "$dest"
echo "cloned $RWBOT_SOURCE_REF into $dest"
