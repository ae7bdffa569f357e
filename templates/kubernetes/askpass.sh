#!/bin/sh
# GIT_ASKPASS helper for the clone step: git asks for a user name, then for the
# password, which is the short-lived token in the mounted credential file.
case "${1:-}" in
    Username*) echo oauth2 ;;
    *) cat "$RWBOT_CREDENTIAL_FILE" 2>/dev/null || true ;;
esac
