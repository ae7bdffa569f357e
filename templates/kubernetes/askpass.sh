#!/bin/sh
# GIT_ASKPASS helper for the clone step: git asks for a user name, then for the
# password. Both come from the mounted credential (a project deploy token): the
# token in $RWBOT_CREDENTIAL_FILE, its user name in the file next to it.
case "${1:-}" in
    Username*) cat "${RWBOT_CREDENTIAL_FILE%/*}/username" 2>/dev/null || true ;;
    *) cat "$RWBOT_CREDENTIAL_FILE" 2>/dev/null || true ;;
esac
