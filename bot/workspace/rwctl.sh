#!/bin/sh
# rwctl: the review workspace bot's tool inside every workspace container.
#
# Installed at /opt/rwbot/rwctl and run as root through the runtime's exec (an
# argument list, never a shell string). It turns GitLab reviewers into Linux users
# of the workspace and opens shells as them. POSIX sh: it runs under dash and
# busybox ash, in Debian-like images (shadow tools: useradd, usermod, groupadd,
# gpasswd) and in busybox-only images, where it edits /etc/passwd, /etc/group and
# /etc/shadow itself (Debian's busybox has no adduser applet).
#
#   rwctl init --checkout DIR --group NAME --gid N
#   rwctl adduser --uid N|auto --name LINUXNAME --gitlab-id ID --gitlab-username U
#                 --role read|write --git-name NAME --git-email EMAIL --group NAME
#                 [--key 'TYPE BASE64 [COMMENT]']...
#   rwctl shell --name LINUXNAME [--command STRING] [--session ID]
#   rwctl end --session ID
#   rwctl lock --name LINUXNAME
#   rwctl run --group NAME --directory DIR --log FILE --command STRING
#   rwctl users
#
# Exit codes: 0 ok, 2 bad input, 3 conflict or refused, 1 any other failure.
# Every message is one line on stderr starting with "rwctl: "; bad input names
# the argument, never echoes its value.
#
# Records: /var/lib/rwbot/users, one tab-separated line per user we created:
#   linux name, uid, GitLab id, GitLab username, role (read|write), state
#   (active|locked). Records are never deleted, so a uid is never reused for
#   another GitLab id and an account we did not create is never taken over.
#   "--uid auto" takes the uid recorded for the GitLab id, else the lowest uid
#   from the minimum up to 65533 that no record, account or group has, so
#   reviewers fit a user namespace's 65,536 uids (Kubernetes hostUsers: false).
# Single quotes around awk and sh programs are deliberate: their variables belong
# to awk or to the user's shell, never to this one.
# shellcheck disable=SC2016
set -eu

# The environment the container was given (its image's and the devfile's),
# taken before this script changes any of it: init keeps it for the shells.
inherited_env=$(export -p)

LC_ALL=C
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL PATH
umask 022

STATE_DIR=/var/lib/rwbot
USERS_DB=$STATE_DIR/users
CHECKOUT_FILE=$STATE_DIR/checkout
LOCK=$STATE_DIR/lock-holder
SESSIONS_DIR=$STATE_DIR/sessions
SHELLS_DIR=$STATE_DIR/shells
PROFILE_SNIPPET=/etc/profile.d/rwbot.sh
ENV_FILE=/etc/rwbot/environment
USER_PATH=/usr/local/bin:/usr/bin:/bin
# How a reviewer's shell starts, run as the reviewer once privileges are gone:
# the container's environment (ENV_FILE, as `export -p` wrote it), then the
# account's own HOME, USER, LOGNAME, SHELL and TERM over it.
ENV_WRAPPER='_rwbot_h=$HOME _rwbot_u=$USER _rwbot_s=$SHELL _rwbot_t=$TERM
if [ -r /etc/rwbot/environment ]; then . /etc/rwbot/environment; fi
export HOME="$_rwbot_h" USER="$_rwbot_u" LOGNAME="$_rwbot_u" SHELL="$_rwbot_s"
export TERM="$_rwbot_t"
unset _rwbot_h _rwbot_u _rwbot_s _rwbot_t
exec "$@"'
MIN_UID=${RWCTL_MIN_UID:-10000}
# The highest uid "--uid auto" gives: 65534 is nobody's, and a user namespace
# maps no more than 0-65535.
MAX_AUTO_UID=65533
MAX_ID=2147483647
# The account a devfile's postStart commands run as: the merge request's code,
# which must not run as root, owned by no reviewer. Its uid comes from below
# the reviewers' range and is kept in DEVFILE_UID_FILE across restarts.
DEVFILE_ACCOUNT=rwbot-devfile
DEVFILE_UID_FILE=$STATE_DIR/devfile-uid
MAX_KEYS=100

# Names the tool never gives to a reviewer, even if the image lacks them; names
# starting with "rwbot" or "systemd-" are reserved as well (see is_reserved).
RESERVED_NAMES='root daemon bin sys sync games man lp mail news uucp proxy
www-data backup list irc gnats nobody nogroup _apt messagebus sshd postgres
mysql admin administrator adm operator staff users sudo wheel shadow utmp tty
disk kmem dialout cdrom floppy audio video plugdev netdev input kvm render sgx
src voice fax tape git gitlab-runner ftp halt shutdown polkitd avahi dnsmasq
uuidd tss systemd'

C1_BYTES=$(printf '\200\201\202\203\204\205\206\207\210\211\212\213\214\215\216\217')
C1_BYTES=$C1_BYTES$(printf '\220\221\222\223\224\225\226\227\230\231\232\233\234\235\236\237')
C2_LEAD=$(printf '\302')

chosen_status=0
holding_lock=0


# --- exit handling --------------------------------------------------------------

# Any failure we did not classify ourselves (a tool's own exit status) becomes 1,
# so 2 and 3 always mean what the caller thinks they mean.
on_exit() {
    status=$?
    if [ "$holding_lock" = 1 ]; then
        rm -f "$LOCK"
    fi
    if [ "$status" -ne 0 ] && [ "$status" -ne "$chosen_status" ]; then
        exit 1
    fi
}
trap on_exit EXIT

die() {
    chosen_status=$1
    shift
    printf 'rwctl: %s\n' "$*" >&2
    exit "$chosen_status"
}

bad() {
    die 2 "bad $1: $2"
}

# Runs a command; a failure ends the tool with status 1 naming the command.
run() {
    "$@" || die 1 "failed: $1"
}


# --- validation (pure) ----------------------------------------------------------

has_control() {
    case $1 in
        *[[:cntrl:]]*) return 0 ;;
        *"$C2_LEAD"["$C1_BYTES"]*) return 0 ;;
    esac
    return 1
}

char_count() {
    printf '%s' "$1" | tr -d '\200-\277' | wc -c | tr -d ' '
}

is_decimal() {
    case $1 in
        '' | *[!0-9]* | 0?*) return 1 ;;
    esac
    [ "${#1}" -le 10 ] && [ "$1" -le "$MAX_ID" ]
}

is_linux_name() {
    case $1 in
        '' | *[!a-z0-9_-]* | [!a-z_]*) return 1 ;;
    esac
    [ "${#1}" -le 32 ]
}

is_reserved() {
    case $1 in
        rwbot* | systemd-*) return 0 ;;
    esac
    for reserved in $RESERVED_NAMES; do
        [ "$1" = "$reserved" ] && return 0
    done
    return 1
}

is_gitlab_username() {
    case $1 in
        '' | *[!A-Za-z0-9_.-]* | [!A-Za-z0-9_]*) return 1 ;;
    esac
    [ "${#1}" -le 255 ]
}

is_git_name() {
    [ -n "$1" ] && ! has_control "$1" && [ "$(char_count "$1")" -le 255 ]
}

is_email() {
    [ "${#1}" -le 254 ] && ! has_control "$1" || return 1
    label='[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?'
    printf '%s\n' "$1" | grep -Eqx "[A-Za-z0-9._%+-]+@$label(\\.$label)*"
}

# An authorized_keys line: TYPE BASE64 [COMMENT], no options prefix.
is_ssh_key() {
    [ "${#1}" -le 16384 ] && ! has_control "$1" || return 1
    key_type=${1%% *}
    key_rest=${1#"$key_type"}
    key_rest=${key_rest# }
    key_blob=${key_rest%% *}
    case $key_type in
        ssh-ed25519 | ssh-rsa | ecdsa-sha2-nistp256 | ecdsa-sha2-nistp384) ;;
        ecdsa-sha2-nistp521 | sk-ssh-ed25519@openssh.com) ;;
        sk-ecdsa-sha2-nistp256@openssh.com) ;;
        *) return 1 ;;
    esac
    case $key_blob in
        '' | *[!A-Za-z0-9+/=]* | =* | *=[!=]*) return 1 ;;
    esac
    [ "${#key_blob}" -ge 16 ]
}

# Absolute, plain characters, no "." or ".." parts, outside the system's own trees.
is_checkout_path() {
    case $1 in
        /*) ;;
        *) return 1 ;;
    esac
    case $1 in
        *[!A-Za-z0-9._/+@-]* | *//* | */ | */./* | */../* | */. | */..) return 1 ;;
    esac
    case $1 in
        /bin | /bin/* | /boot | /boot/* | /dev | /dev/* | /etc | /etc/* | /home) return 1 ;;
        /lib | /lib/* | /lib32 | /lib32/* | /lib64 | /lib64/* | /libx32*) return 1 ;;
        /opt | /opt/rwbot | /opt/rwbot/* | /proc | /proc/* | /root | /root/*) return 1 ;;
        /run | /run/* | /sbin | /sbin/* | /sys | /sys/* | /usr | /usr/*) return 1 ;;
        /var | /var/lib | /var/lib/rwbot | /var/lib/rwbot/*) return 1 ;;
    esac
    [ "${#1}" -le 1024 ]
}


# --- state and account lookups --------------------------------------------------

ensure_state_dir() {
    run mkdir -p "$STATE_DIR"
    run chown root:0 "$STATE_DIR"
    run chmod 0700 "$STATE_DIR"
}

# proc_start PID: the process's start time (field 22 of /proc/PID/stat), which
# tells a live process apart from a later one that reused its pid.
proc_start() {
    stat_line=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    # Fields after the command name, which ends at the last ")"; the 22nd field
    # of the line is the 20th of these. Word splitting is wanted: all numbers.
    # shellcheck disable=SC2086
    set -- ${stat_line##*) }
    shift 19
    printf '%s\n' "$1"
}

# is_running PID START: the process PID is the one that started at START.
is_running() {
    is_decimal "${1:-}" && [ "$(proc_start "$1" || true)" = "${2:-}" ]
}

# A lock serialises changes to the records and account files (flock(1) is not
# in every image): a symlink whose target is its holder, "pid start-time",
# made and read in one step each. A lock left by a killed holder is taken over,
# even once its pid is another process's. Only one waiter at a time breaks a
# lock, under a second such lock, and looks again there, so that a lock taken
# anew meanwhile is never the one it removes.
acquire_lock() {
    ensure_state_dir
    me="$$ $(proc_start "$$")"
    tries=0
    until ln -s "$me" "$LOCK" 2>/dev/null; do
        holder=$(readlink "$LOCK" 2>/dev/null || true)
        if [ -n "$holder" ] && ! holder_running "$holder" && take "$LOCK.break"; then
            [ "$(readlink "$LOCK" 2>/dev/null || true)" != "$holder" ] || rm -f "$LOCK"
            rm -f "$LOCK.break"
            continue
        fi
        tries=$((tries + 1))
        [ "$tries" -le 300 ] || die 1 "busy: $LOCK is held by another rwctl"
        sleep 0.1
    done
    holding_lock=1
}

# take LINK: hold LINK, taking it over from a holder that is gone.
take() {
    ln -s "$me" "$1" 2>/dev/null && return 0
    holder_running "$(readlink "$1" 2>/dev/null || true)" && return 1
    rm -f "$1"
    ln -s "$me" "$1" 2>/dev/null
}

# holder_running "PID START": that process is still there.
holder_running() {
    # shellcheck disable=SC2086 # two numbers, split on purpose
    set -- $1
    is_running "${1:-}" "${2:-}"
}

release_lock() {
    rm -f "$LOCK"
    holding_lock=0
}

# record_field KEY-COLUMN KEY FIELD: a field of the first record whose column
# KEY-COLUMN equals KEY (1 = linux name, 2 = uid, 3 = GitLab id).
record_field() {
    [ -f "$USERS_DB" ] || return 0
    COL=$1 KEY=$2 FIELD=$3 awk -F '\t' '
        $(ENVIRON["COL"] + 0) == ENVIRON["KEY"] { print $(ENVIRON["FIELD"] + 0); exit }
    ' "$USERS_DB"
}

record_put() {
    tmp=$USERS_DB.tmp
    : >"$tmp"
    chmod 0600 "$tmp"
    if [ -f "$USERS_DB" ]; then
        KEY=$1 awk -F '\t' '$1 != ENVIRON["KEY"]' "$USERS_DB" >"$tmp"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$tmp"
    run mv -f "$tmp" "$USERS_DB"
}

# db_field FILE KEY-COLUMN KEY FIELD, for colon-separated files (/etc/passwd...).
db_field() {
    [ -f "$1" ] || return 0
    COL=$2 KEY=$3 FIELD=$4 awk -F: '
        $(ENVIRON["COL"] + 0) == ENVIRON["KEY"] { print $(ENVIRON["FIELD"] + 0); exit }
    ' "$1"
}

# lowest_free_uid [FIRST LAST]: the lowest uid from FIRST to LAST (MIN_UID to
# MAX_AUTO_UID) that no record (a locked or half-created account too), account
# or group has; empty if none.
lowest_free_uid() {
    {
        if [ -f "$USERS_DB" ]; then
            cut -f 2 "$USERS_DB"
        fi
        cut -d: -f 3 /etc/passwd
        cut -d: -f 3 /etc/group
    } | FIRST=${1:-$MIN_UID} LAST=${2:-$MAX_AUTO_UID} awk '
        { used[$1] = 1 }
        END {
            for (uid = ENVIRON["FIRST"] + 0; uid <= ENVIRON["LAST"] + 0; uid++)
                if (!((uid "") in used)) { print uid; exit }
        }'
}

is_member() {
    USER_NAME=$1 GROUP_NAME=$2 awk -F: '
        $1 == ENVIRON["GROUP_NAME"] {
            n = split($4, members, ",")
            for (i = 1; i <= n; i++) if (members[i] == ENVIRON["USER_NAME"]) found = 1
        }
        END { exit found ? 0 : 1 }
    ' /etc/group
}

groups_of() {
    USER_NAME=$1 awk -F: '
        {
            n = split($4, members, ",")
            for (i = 1; i <= n; i++) if (members[i] == ENVIRON["USER_NAME"]) print $1
        }
    ' /etc/group
}

has_shadow_tools() {
    for tool in useradd usermod groupadd gpasswd; do
        command -v "$tool" >/dev/null 2>&1 || return 1
    done
}

first_executable() {
    for candidate in "$@"; do
        if [ -x "$candidate" ]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

login_shell() {
    first_executable /bin/bash /usr/bin/bash /bin/sh
}

nologin_shell() {
    first_executable /usr/sbin/nologin /sbin/nologin /bin/nologin /bin/false
}


# --- editing account files without the shadow tools -----------------------------

# edit_db FILE AWK-PROGRAM [VAR=VALUE]...: rewrite FILE atomically through the
# program, keeping its mode and owner. Values reach awk through ENVIRON only.
edit_db() {
    db=$1 program=$2
    shift 2
    run cp -p "$db" "$db.rwctl-tmp"
    env "$@" awk -F: -v OFS=: "$program" "$db" >"$db.rwctl-tmp" ||
        die 1 "failed: editing $db"
    run mv -f "$db.rwctl-tmp" "$db"
}

append_db() {
    edit_db "$1" '{ print } END { print ENVIRON["LINE"] }' LINE="$2"
}

plain_add_user() {
    name=$1 uid=$2 shell=$3
    password_field='*'
    if [ -f /etc/shadow ]; then
        password_field=x
    fi
    append_db /etc/passwd "$name:$password_field:$uid:$uid::/home/$name:$shell"
    if [ -f /etc/shadow ]; then
        append_db /etc/shadow "$name:*:$(($(date +%s) / 86400)):0:99999:7:::"
    fi
    run mkdir -p "/home/$name"
    if [ -d /etc/skel ]; then
        run cp -R /etc/skel/. "/home/$name/"
    fi
    run chown -R -h "$uid:$uid" "/home/$name"
}

# plain_set_login NAME SHELL PASSWORD EXPIRE (EXPIRE empty: never).
plain_set_login() {
    edit_db /etc/passwd '$1 == ENVIRON["NAME"] { $7 = ENVIRON["VALUE"] } { print }' \
        NAME="$1" VALUE="$2"
    if [ -f /etc/shadow ]; then
        edit_db /etc/shadow '
            $1 == ENVIRON["NAME"] { $2 = ENVIRON["PASSWORD"]; $8 = ENVIRON["EXPIRE"] }
            { print }' NAME="$1" PASSWORD="$3" EXPIRE="$4"
    else
        edit_db /etc/passwd \
            '$1 == ENVIRON["NAME"] { $2 = ENVIRON["PASSWORD"] } { print }' \
            NAME="$1" PASSWORD="$3"
    fi
}

plain_add_member() {
    edit_db /etc/group '
        $1 == ENVIRON["GROUP_NAME"] { $4 = ($4 == "" ? "" : $4 ",") ENVIRON["NAME"] }
        { print }' NAME="$1" GROUP_NAME="$2"
}

plain_remove_member() {
    edit_db /etc/group '
        $1 == ENVIRON["GROUP_NAME"] {
            n = split($4, members, ",")
            kept = ""
            for (i = 1; i <= n; i++)
                if (members[i] != ENVIRON["NAME"])
                    kept = (kept == "" ? members[i] : kept "," members[i])
            $4 = kept
        }
        { print }' NAME="$1" GROUP_NAME="$2"
}


# --- account operations (shadow tools when present) -----------------------------

add_group() {
    if has_shadow_tools; then
        run groupadd -g "$2" "$1"
    else
        append_db /etc/group "$1:x:$2:"
    fi
}

add_account() {
    mkdir -p /home
    if [ -z "$(db_field /etc/group 1 "$1" 3)" ]; then
        add_group "$1" "$2"
    fi
    if has_shadow_tools; then
        run useradd -m -l -u "$2" -g "$2" -d "/home/$1" -s "$3" -p '*' "$1"
    else
        plain_add_user "$1" "$2" "$3"
    fi
}

# set_login NAME SHELL PASSWORD EXPIRE. "*" is "no password" (key and exec
# logins still work); "!*" is locked, which sshd honours as well.
set_login() {
    if has_shadow_tools; then
        run usermod -s "$2" -p "$3" -e "$4" "$1"
    else
        plain_set_login "$@"
    fi
}

add_member() {
    is_member "$1" "$2" && return 0
    if has_shadow_tools; then
        run usermod -a -G "$2" "$1"
    else
        plain_add_member "$1" "$2"
    fi
}

remove_member() {
    is_member "$1" "$2" || return 0
    if has_shadow_tools; then
        gpasswd -d "$1" "$2" >/dev/null || die 1 "failed: gpasswd"
    else
        plain_remove_member "$1" "$2"
    fi
}

# proc_uid_matches STATUS-FILE UID: a live (not zombie) process with UID as its
# real, effective or saved user id.
proc_uid_matches() {
    status_text=$(cat "$1" 2>/dev/null) || return 1
    case $status_text in
        *"State:	Z"*) return 1 ;;
    esac
    uid_line=${status_text#*"Uid:	"}
    uid_line=${uid_line%%"
"*}
    read -r real effective saved _ <<EOF
$uid_line
EOF
    [ "$real" = "$2" ] || [ "$effective" = "$2" ] || [ "$saved" = "$2" ]
}

# SIGKILL every process of UID, again until none is left (a process may fork
# while we kill). Needs CAP_KILL: root may not signal other users' processes.
kill_processes() {
    if command -v pkill >/dev/null 2>&1; then
        pkill -KILL -U "$1" 2>/dev/null || true
        pkill -KILL -u "$1" 2>/dev/null || true
    fi
    rounds=0
    while :; do
        left=0
        for status_file in /proc/[0-9]*/status; do
            proc_uid_matches "$status_file" "$1" || continue
            pid=${status_file#/proc/}
            kill -KILL "${pid%/status}" 2>/dev/null || true
            left=$((left + 1))
        done
        [ "$left" -eq 0 ] && return 0
        rounds=$((rounds + 1))
        [ "$rounds" -le 30 ] || die 1 "kill-failed: processes of uid $1 survive SIGKILL"
        sleep 0.1
    done
}

user_env_run() {
    # user_env_run NAME HOME SHELL COMMAND...: exec COMMAND in a clean environment.
    term=${TERM:-dumb}
    case $term in
        '' | *[!A-Za-z0-9._+-]*) term=dumb ;;
    esac
    env_name=$1 env_home=$2 env_shell=$3
    shift 3
    exec env -i HOME="$env_home" USER="$env_name" LOGNAME="$env_name" \
        SHELL="$env_shell" PATH="$USER_PATH" TERM="$term" LANG=C.UTF-8 "$@"
}

has_full_setpriv() {
    command -v setpriv >/dev/null 2>&1 &&
        setpriv --help 2>&1 | grep -q -- --reuid
}

# CAP_SETPCAP (bit 8) is needed to empty the bounding set.
has_setpcap() {
    cap_eff=$(awk '/^CapEff:/ { print $2 }' /proc/self/status)
    [ $((0x$cap_eff & 0x100)) -ne 0 ]
}

# run_as NAME HOME SHELL COMMAND...: exec COMMAND as the user with no way back to
# root: real, effective and saved ids changed (capabilities are cleared with
# them), the user's groups only, no_new_privs so set-uid files do nothing.
run_as() {
    as_name=$1 as_home=$2 as_shell=$3
    shift 3
    as_uid=$(db_field /etc/passwd 1 "$as_name" 3)
    as_gid=$(db_field /etc/passwd 1 "$as_name" 4)
    if [ -z "$as_uid" ] || [ "$as_uid" -eq 0 ]; then
        die 1 "failed: no passwd entry for a non-root user"
    fi
    if has_full_setpriv; then
        setpriv=$(command -v setpriv)
        if has_setpcap; then
            user_env_run "$as_name" "$as_home" "$as_shell" "$setpriv" \
                --reuid="$as_uid" --regid="$as_gid" --init-groups --no-new-privs \
                --inh-caps=-all --bounding-set=-all -- "$@"
        fi
        user_env_run "$as_name" "$as_home" "$as_shell" "$setpriv" \
            --reuid="$as_uid" --regid="$as_gid" --init-groups --no-new-privs \
            --inh-caps=-all -- "$@"
    fi
    su=$(command -v su) || die 1 "failed: neither setpriv nor su in this image"
    # su -m keeps our clean environment; its shell runs exactly our argv.
    # busybox su and setpriv permute options: "--" keeps ours out of theirs.
    if command -v setpriv >/dev/null 2>&1; then
        user_env_run "$as_name" "$as_home" "$as_shell" "$(command -v setpriv)" \
            --nnp -- "$su" -m -s /bin/sh -c 'exec "$@"' -- "$as_name" rwctl "$@"
    fi
    user_env_run "$as_name" "$as_home" "$as_shell" \
        "$su" -m -s /bin/sh -c 'exec "$@"' -- "$as_name" rwctl "$@"
}

# write_user_file NAME HOME DIR FILE: stdin becomes HOME/DIR/FILE, written by the
# user, so a symlink the user planted in the home leads nowhere root could reach.
write_user_file() {
    (
        cd "$2"
        run_as "$1" "$2" /bin/sh /bin/sh -c '
            umask 077
            mkdir -p "$1" && chmod 0700 "$1" &&
                cat >"$1/$2.rwctl-tmp" && chmod 0600 "$1/$2.rwctl-tmp" &&
                mv -f "$1/$2.rwctl-tmp" "$1/$2"
        ' rwctl "$3" "$4"
    ) || die 1 "failed: writing $2/$3/$4"
}

gitconfig_quote() {
    printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'
}


# --- verbs ----------------------------------------------------------------------

# Options come as "--name value" pairs; each verb lists the ones it accepts.
# The option as typed when it is one of ours, else just "argument": a value is
# never echoed back.
option_label() {
    case $1 in
        --checkout | --group | --gid | --uid | --name | --gitlab-id) echo "$1" ;;
        --gitlab-username | --role | --git-name | --git-email | --key) echo "$1" ;;
        --command) echo "$1" ;;
        *) echo argument ;;
    esac
}

need_value() {
    [ "$#" -ge 2 ] || bad "$(option_label "$1")" "missing value"
}

once() {
    [ -z "$2" ] || bad "$1" "given twice"
}

# set_command VALUE: --command, which may be empty, but not given twice.
set_command() {
    [ "$has_command" = 0 ] || bad --command "given twice"
    has_command=1 command=$1
}

cmd_init() {
    checkout='' group='' gid=''
    while [ "$#" -gt 0 ]; do
        need_value "$@"
        case $1 in
            --checkout) once "$1" "$checkout"; checkout=$2 ;;
            --group) once "$1" "$group"; group=$2 ;;
            --gid) once "$1" "$gid"; gid=$2 ;;
            *) bad argument "unknown option" ;;
        esac
        shift 2
    done
    is_checkout_path "$checkout" || bad --checkout "must be an absolute plain path"
    is_linux_name "$group" || bad --group "must match ^[a-z_][a-z0-9_-]{0,31}\$"
    if ! is_decimal "$gid" || [ "$gid" -lt 1000 ] || [ "$gid" -ge 65534 ]; then
        bad --gid "must be a decimal number from 1000 to 65533"
    fi

    acquire_lock
    existing_gid=$(db_field /etc/group 1 "$group" 3)
    existing_name=$(db_field /etc/group 3 "$gid" 1)
    if [ -n "$existing_gid" ] && [ "$existing_gid" != "$gid" ]; then
        die 3 "group-taken: $group exists with gid $existing_gid"
    fi
    if [ -n "$existing_name" ] && [ "$existing_name" != "$group" ]; then
        die 3 "gid-taken: gid $gid belongs to $existing_name"
    fi
    if [ -z "$existing_gid" ]; then
        add_group "$group" "$gid"
    fi

    if [ -L "$checkout" ] || { [ -e "$checkout" ] && [ ! -d "$checkout" ]; }; then
        die 3 "refused: --checkout exists and is not a directory"
    fi
    run mkdir -p "$checkout"
    # find without -L never follows the checkout's symlinks; chown -h changes the
    # link itself, so a link in the MR's code cannot hand us a system file.
    # Without CAP_FSETID the kernel drops the setgid bit we set on a directory of
    # a group we are not in, so directories get it while they are root's.
    run find "$checkout" -type d -exec chown -h root:0 {} +
    run find "$checkout" -type d -exec chmod 2775 {} +
    run find "$checkout" -exec chown -h "root:$group" {} +
    run find "$checkout" -type f -exec chmod g+rw,o+r {} +
    printf '%s\n' "$checkout" >"$CHECKOUT_FILE.tmp"
    run mv -f "$CHECKOUT_FILE.tmp" "$CHECKOUT_FILE"

    run mkdir -p "${PROFILE_SNIPPET%/*}"
    cat >"$PROFILE_SNIPPET.tmp" <<EOF
# Written by rwctl: reviewers share the checkout through group $group.
if [ "\$(id -u)" -ge $MIN_UID ]; then umask 002; fi
EOF
    run chmod 0644 "$PROFILE_SNIPPET.tmp"
    run mv -f "$PROFILE_SNIPPET.tmp" "$PROFILE_SNIPPET"

    # Anyone may read it: it holds the image's and the devfile's settings,
    # which the merge request shows anyway, and never a credential.
    run mkdir -p "${ENV_FILE%/*}"
    printf '%s\n' "$inherited_env" >"$ENV_FILE.tmp"
    run chmod 0644 "$ENV_FILE.tmp"
    run mv -f "$ENV_FILE.tmp" "$ENV_FILE"
}

cmd_adduser() {
    uid='' name='' gitlab_id='' gitlab_username='' role='' git_name='' git_email=''
    group='' keys='' key_count=0
    while [ "$#" -gt 0 ]; do
        need_value "$@"
        case $1 in
            --uid) once "$1" "$uid"; uid=$2 ;;
            --name) once "$1" "$name"; name=$2 ;;
            --gitlab-id) once "$1" "$gitlab_id"; gitlab_id=$2 ;;
            --gitlab-username) once "$1" "$gitlab_username"; gitlab_username=$2 ;;
            --role) once "$1" "$role"; role=$2 ;;
            --git-name) once "$1" "$git_name"; git_name=$2 ;;
            --git-email) once "$1" "$git_email"; git_email=$2 ;;
            --group) once "$1" "$group"; group=$2 ;;
            --key)
                is_ssh_key "$2" || bad --key "must be 'TYPE BASE64 [COMMENT]'"
                key_count=$((key_count + 1))
                [ "$key_count" -le "$MAX_KEYS" ] || bad --key "more than $MAX_KEYS keys"
                keys="$keys$2
"
                ;;
            *) bad argument "unknown option" ;;
        esac
        shift 2
    done
    if [ "$uid" != auto ] &&
        { ! is_decimal "$uid" || [ "$uid" -lt "$MIN_UID" ] || [ "$uid" -eq 65534 ]; }; then
        bad --uid "must be auto or a decimal number >= $MIN_UID"
    fi
    is_linux_name "$name" || bad --name "must match ^[a-z_][a-z0-9_-]{0,31}\$"
    if ! is_decimal "$gitlab_id" || [ "$gitlab_id" -lt 1 ]; then
        bad --gitlab-id "must be a positive decimal number"
    fi
    is_gitlab_username "$gitlab_username" || bad --gitlab-username "not a GitLab username"
    case $role in
        read | write) ;;
        *) bad --role "must be read or write" ;;
    esac
    is_git_name "$git_name" || bad --git-name "must be 1-255 characters, no control"
    is_email "$git_email" || bad --git-email "must be an email address"
    is_linux_name "$group" || bad --group "must match ^[a-z_][a-z0-9_-]{0,31}\$"

    acquire_lock
    is_reserved "$name" && die 3 "name-taken: $name is reserved"
    [ -n "$(db_field /etc/group 1 "$group" 3)" ] ||
        die 3 "refused: group $group does not exist (run init first)"
    if [ "$uid" = auto ]; then
        # Under the lock, and recorded below before the account is made, so
        # two joins never get the same uid and a uid is never handed out twice.
        uid=$(record_field 3 "$gitlab_id" 2)
        [ -n "$uid" ] || uid=$(lowest_free_uid)
        [ -n "$uid" ] || die 1 "failed: no free uid from $MIN_UID to $MAX_AUTO_UID"
    fi
    refuse_takeover "$name" "$uid" "$gitlab_id"

    if [ -z "$(db_field /etc/passwd 1 "$name" 3)" ]; then
        # Recorded first: an account we half-created stays ours on the re-run.
        record_put "$name" "$uid" "$gitlab_id" "$gitlab_username" "$role" locked
        add_account "$name" "$uid" "$(login_shell)"
    fi
    home=/home/$name
    if [ ! -d "$home" ]; then
        run mkdir -p "$home"
    fi
    run chown -h "$uid:$uid" "$home"
    run chmod 0700 "$home"
    set_login "$name" "$(login_shell)" '*' ''

    if [ "$role" = write ]; then
        add_member "$name" "$group"
    elif is_member "$name" "$group"; then
        # A demoted reviewer's running shells still carry the group: end them,
        # and those that may have read it but not yet dropped privileges.
        remove_member "$name" "$group"
        end_shells "$name"
        kill_processes "$uid"
    fi

    safe_directory=''
    if [ -f "$CHECKOUT_FILE" ]; then
        safe_directory=$(cat "$CHECKOUT_FILE")
    fi
    {
        echo '# Written by the review workspace bot on every join; your own'
        echo '# settings belong in ~/.gitconfig.local.'
        echo '[user]'
        printf '\tname = "%s"\n' "$(gitconfig_quote "$git_name")"
        printf '\temail = "%s"\n' "$(gitconfig_quote "$git_email")"
        if [ -n "$safe_directory" ]; then
            echo '[safe]'
            printf '\tdirectory = "%s"\n' "$(gitconfig_quote "$safe_directory")"
        fi
        echo '[include]'
        echo '	path = ~/.gitconfig.local'
    } | write_user_file "$name" "$home" . .gitconfig
    printf '%s' "$keys" | write_user_file "$name" "$home" .ssh authorized_keys

    record_put "$name" "$uid" "$gitlab_id" "$gitlab_username" "$role" active
    printf '%s\n' "$name"
}

# Refuses (exit 3) unless NAME and UID are free or already ours for this GitLab id.
refuse_takeover() {
    name=$1 uid=$2 gitlab_id=$3
    passwd_uid=$(db_field /etc/passwd 1 "$name" 3)
    passwd_name=$(db_field /etc/passwd 3 "$uid" 1)
    recorded_id=$(record_field 1 "$name" 3)
    recorded_uid=$(record_field 1 "$name" 2)
    uid_owner_id=$(record_field 2 "$uid" 3)
    group_gid=$(db_field /etc/group 1 "$name" 3)
    gid_owner=$(db_field /etc/group 3 "$uid" 1)

    if [ -n "$passwd_uid" ] && [ "$passwd_uid" != "$uid" ]; then
        die 3 "name-taken: $name exists with uid $passwd_uid"
    fi
    if [ -n "$passwd_uid" ] && [ -z "$recorded_id" ]; then
        die 3 "name-taken: $name is an account of the image"
    fi
    if [ -n "$recorded_id" ] && [ "$recorded_id" != "$gitlab_id" ]; then
        die 3 "name-taken: $name belongs to another GitLab user"
    fi
    if [ -n "$recorded_uid" ] && [ "$recorded_uid" != "$uid" ]; then
        die 3 "name-taken: $name was created with uid $recorded_uid"
    fi
    if [ -n "$passwd_name" ] && [ "$passwd_name" != "$name" ]; then
        die 3 "uid-taken: uid $uid belongs to $passwd_name"
    fi
    if [ -n "$uid_owner_id" ] && [ "$uid_owner_id" != "$gitlab_id" ]; then
        die 3 "uid-taken: uid $uid belongs to another GitLab user"
    fi
    if [ -z "$passwd_uid" ] && [ -z "$recorded_id" ]; then
        if [ -n "$group_gid" ]; then
            die 3 "name-taken: group $name exists"
        fi
        if [ -n "$gid_owner" ]; then
            die 3 "uid-taken: gid $uid belongs to group $gid_owner"
        fi
        if [ -e "/home/$name" ] || [ -L "/home/$name" ]; then
            die 3 "name-taken: /home/$name exists"
        fi
    fi
}

# A session id names one terminal so that the bot can end exactly that shell
# when its browser tab closes: 32 lower-case hex digits.
is_session_id() {
    case $1 in
        '' | *[!0-9a-f]*) return 1 ;;
    esac
    [ "${#1}" -eq 32 ]
}

# Every shell is recorded under the lock, before it drops privileges, so that a
# lock of its user that lands before the drop still finds it: its pid stays the
# same through every exec up to the user's own shell. Records of shells that
# have ended are dropped here too.
record_shell() {
    mkdir -p "$SHELLS_DIR"
    chmod 0700 "$SHELLS_DIR"
    for file in "$SHELLS_DIR"/*; do
        [ -f "$file" ] || continue
        read -r start owner <"$file" || true
        is_running "${file##*/}" "${start:-}" || rm -f "$file"
    done
    printf '%s %s\n' "$(proc_start "$$")" "$1" >"$SHELLS_DIR/$$"
}

# end_shells NAME: SIGKILL the shells recorded for NAME, whoever they run as yet.
end_shells() {
    [ -d "$SHELLS_DIR" ] || return 0
    for file in "$SHELLS_DIR"/*; do
        [ -f "$file" ] || continue
        read -r start owner <"$file" || true
        [ "${owner:-}" = "$1" ] || continue
        if is_running "${file##*/}" "${start:-}"; then
            kill -KILL "${file##*/}" 2>/dev/null || true
        fi
        rm -f "$file"
    done
}

cmd_shell() {
    name='' command='' has_command=0 session=''
    while [ "$#" -gt 0 ]; do
        need_value "$@"
        case $1 in
            --name) once "$1" "$name"; name=$2 ;;
            --session) once "$1" "$session"; session=$2 ;;
            --command) set_command "$2" ;;
            *) bad argument "unknown option" ;;
        esac
        shift 2
    done
    is_linux_name "$name" || bad --name "must match ^[a-z_][a-z0-9_-]{0,31}\$"
    [ -z "$session" ] || is_session_id "$session" || bad --session "must be 32 hex digits"

    acquire_lock
    state=$(record_field 1 "$name" 6)
    [ -n "$state" ] || die 3 "refused: $name is not a workspace user"
    [ "$state" = active ] || die 3 "refused: $name is locked"
    home=$(db_field /etc/passwd 1 "$name" 6)
    [ -n "$home" ] || die 3 "refused: $name has no account"
    record_shell "$name"
    release_lock

    directory=$home
    if [ -f "$CHECKOUT_FILE" ] && [ -d "$(cat "$CHECKOUT_FILE")" ]; then
        directory=$(cat "$CHECKOUT_FILE")
    fi
    shell=$(login_shell)
    if [ -n "$session" ]; then
        # Every step from here on is an exec, so this pid becomes the shell.
        mkdir -p "$SESSIONS_DIR"
        chmod 0700 "$SESSIONS_DIR"
        printf '%s %s\n' "$$" "$(proc_start "$$")" >"$SESSIONS_DIR/$session"
    fi
    cd "$directory" || die 1 "failed: cd"
    umask 002
    set -- /bin/sh -c "$ENV_WRAPPER" rwctl-env "$shell" -l
    if [ "$has_command" = 1 ]; then
        run_as "$name" "$home" "$shell" "$@" -c "$command"
    fi
    run_as "$name" "$home" "$shell" "$@"
}

cmd_lock() {
    name=''
    while [ "$#" -gt 0 ]; do
        need_value "$@"
        case $1 in
            --name) once "$1" "$name"; name=$2 ;;
            *) bad argument "unknown option" ;;
        esac
        shift 2
    done
    is_linux_name "$name" || bad --name "must match ^[a-z_][a-z0-9_-]{0,31}\$"

    acquire_lock
    uid=$(record_field 1 "$name" 2)
    [ -n "$uid" ] || die 3 "refused: $name is not a workspace user"
    record_put "$name" "$uid" "$(record_field 1 "$name" 3)" \
        "$(record_field 1 "$name" 4)" "$(record_field 1 "$name" 5)" locked
    if [ -n "$(db_field /etc/passwd 1 "$name" 3)" ]; then
        set_login "$name" "$(nologin_shell)" '!*' 1
        for member_of in $(groups_of "$name"); do
            remove_member "$name" "$member_of"
        done
    fi
    end_shells "$name"
    kill_processes "$uid"
}

# End the shell of one terminal session: SIGHUP to it and its process group, as a
# closing terminal would send, then SIGKILL to whatever ignores that.
cmd_end() {
    session=''
    while [ "$#" -gt 0 ]; do
        need_value "$@"
        case $1 in
            --session) once "$1" "$session"; session=$2 ;;
            *) bad argument "unknown option" ;;
        esac
        shift 2
    done
    is_session_id "$session" || bad --session "must be 32 hex digits"

    file=$SESSIONS_DIR/$session
    [ -f "$file" ] || return 0
    read -r pid start <"$file" || true
    rm -f "$file"
    is_decimal "${pid:-}" || return 0
    [ "$(proc_start "$pid" || true)" = "${start:-}" ] || return 0
    kill -HUP -- "-$pid" 2>/dev/null || true
    kill -HUP "$pid" 2>/dev/null || true
    rounds=0
    while [ "$(proc_start "$pid" || true)" = "$start" ]; do
        rounds=$((rounds + 1))
        if [ "$rounds" -gt 20 ]; then
            kill -KILL -- "-$pid" 2>/dev/null || true
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
}

# The account postStart commands run as, made on first use: an image account
# of that name is never taken over, and the uid it had is given again when the
# account files were reset (a new pod), unless something else has it now.
ensure_devfile_account() {
    group=$1
    kept=$(cat "$DEVFILE_UID_FILE" 2>/dev/null || true)
    uid=$(db_field /etc/passwd 1 "$DEVFILE_ACCOUNT" 3)
    if [ -n "$uid" ]; then
        [ "$uid" = "$kept" ] || die 3 "name-taken: $DEVFILE_ACCOUNT is the image's"
    else
        if ! is_decimal "$kept" || [ -n "$(db_field /etc/passwd 3 "$kept" 1)" ] ||
            [ -n "$(db_field /etc/group 3 "$kept" 1)" ]; then
            kept=$(lowest_free_uid $((MIN_UID - 1000)) $((MIN_UID - 1)))
            [ -n "$kept" ] || die 1 "failed: no free uid below $MIN_UID"
        fi
        printf '%s\n' "$kept" >"$DEVFILE_UID_FILE"
        add_account "$DEVFILE_ACCOUNT" "$kept" "$(nologin_shell)"
        uid=$kept
    fi
    add_member "$DEVFILE_ACCOUNT" "$group"
}

# Run one postStart command as DEVFILE_ACCOUNT in DIR, in the container's
# environment, its output appended to FILE (which root opens: the command can
# add to it but not replace it); the exit code is the command's.
cmd_run() {
    group='' directory='' log='' command='' has_command=0
    while [ "$#" -gt 0 ]; do
        need_value "$@"
        case $1 in
            --group) once "$1" "$group"; group=$2 ;;
            --directory) once "$1" "$directory"; directory=$2 ;;
            --log) once "$1" "$log"; log=$2 ;;
            --command) set_command "$2" ;;
            *) bad argument "unknown option" ;;
        esac
        shift 2
    done
    is_linux_name "$group" || bad --group "must match ^[a-z_][a-z0-9_-]{0,31}\$"
    is_checkout_path "$directory" || bad --directory "must be an absolute plain path"
    is_checkout_path "$log" || bad --log "must be an absolute plain path"
    [ "$has_command" = 1 ] || bad --command "missing"

    acquire_lock
    [ -n "$(db_field /etc/group 1 "$group" 3)" ] ||
        die 3 "refused: group $group does not exist (run init first)"
    ensure_devfile_account "$group"
    release_lock

    home=$(db_field /etc/passwd 1 "$DEVFILE_ACCOUNT" 6)
    [ -d "$home" ] || run mkdir -p "$home"
    run chown -h "$uid:$uid" "$home"
    run chmod 0700 "$home"
    [ -L "$log" ] && die 3 "refused: --log is a symbolic link"
    run mkdir -p "${log%/*}"
    : >>"$log"
    run chmod 0644 "$log"
    printf '== %s\n' "$command" >>"$log"
    cd "$directory" || die 1 "failed: cd"
    umask 002
    run_as "$DEVFILE_ACCOUNT" "$home" /bin/sh /bin/sh -c "$ENV_WRAPPER" rwctl-env \
        /bin/sh -c "$command" >>"$log" 2>&1
}

cmd_users() {
    [ "$#" -eq 0 ] || bad argument "users takes no options"
    if [ -f "$USERS_DB" ]; then
        cat "$USERS_DB"
    fi
}

main() {
    [ "$(id -u)" = 0 ] || die 1 "failed: must run as root"
    if ! is_decimal "$MIN_UID" || [ "$MIN_UID" -lt 1000 ]; then
        die 1 "failed: RWCTL_MIN_UID must be a decimal number >= 1000"
    fi
    [ "$#" -ge 1 ] || bad verb "missing (init, adduser, shell, end, lock, run, users)"
    verb=$1
    shift
    case $verb in
        init) cmd_init "$@" ;;
        adduser) cmd_adduser "$@" ;;
        shell) cmd_shell "$@" ;;
        end) cmd_end "$@" ;;
        lock) cmd_lock "$@" ;;
        run) cmd_run "$@" ;;
        users) cmd_users "$@" ;;
        *) bad verb "must be init, adduser, shell, end, lock, run or users" ;;
    esac
}

main "$@"
