#!/usr/bin/env bash
# Install tcpmq as a systemd service on Debian 12 or Amazon Linux 2023 (README, "Run it on EC2").
#
#   sudo deploy/install.sh                  install from this checkout
#   sudo deploy/install.sh --wheel FILE     install from a built wheel
#   deploy/install.sh --dry-run             print what it would do; change nothing
#
# It installs Python 3.11+ if needed, creates the system user `tcpmq`, a venv
# in /opt/tcpmq/venv with tcpmq in it, /etc/tcpmq/tcpmq.toml (the example,
# systemd/tcpmq.toml), a generated admin password in
# /etc/tcpmq/credentials/admin-password (mode 0600, root's; the unit hands it
# to the broker as a credential), the unit /etc/systemd/system/tcpmq.service,
# and enables and starts it. Run again, it upgrades tcpmq and the unit and
# keeps the config file and the password.
set -euo pipefail

PREFIX=/opt/tcpmq
CONF_DIR=/etc/tcpmq
UNIT=/etc/systemd/system/tcpmq.service
SERVICE_USER=tcpmq
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN=0
WHEEL=""

usage() {
    sed -n '2,14s/^# \{0,1\}//p' "$0"
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --wheel)
        [ $# -ge 2 ] || usage 2
        WHEEL="$2"
        shift
        ;;
    -h | --help) usage 0 ;;
    *)
        echo "install.sh: unknown option $1" >&2
        usage 2
        ;;
    esac
    shift
done

# Every change goes through `run`: with --dry-run it is printed instead.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}

say() {
    printf 'install.sh: %s\n' "$*"
}

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run it as root (sudo), or with --dry-run" >&2
    exit 1
fi

find_python() {
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

install_python() {
    if command -v apt-get >/dev/null 2>&1; then
        # Debian 12: python3 is 3.11; venv and ensurepip come apart.
        run apt-get update -qq
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv
    elif command -v dnf >/dev/null 2>&1; then
        # Amazon Linux 2023: python3 is 3.9; 3.11 is a package of its own.
        run dnf install -y -q python3.11
    else
        echo "install.sh: neither apt-get nor dnf here; install Python 3.11+ first" >&2
        exit 1
    fi
}

# -- Python ---------------------------------------------------------------------
PYTHON="$(find_python || true)"
if [ -z "$PYTHON" ] || ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    say "installing Python 3.11+"
    install_python
    PYTHON="$(find_python || echo python3.11)"
fi
say "python: $PYTHON"

# -- the user -------------------------------------------------------------------
if id "$SERVICE_USER" >/dev/null 2>&1; then
    say "user $SERVICE_USER exists"
else
    nologin="$(command -v nologin || echo /usr/sbin/nologin)"
    run useradd --system --home-dir /var/lib/tcpmq --no-create-home --shell "$nologin" \
        --user-group "$SERVICE_USER"
fi

# -- the venv -------------------------------------------------------------------
if [ ! -x "$PREFIX/venv/bin/python" ]; then
    run mkdir -p "$PREFIX"
    run "$PYTHON" -m venv "$PREFIX/venv"
fi
run "$PREFIX/venv/bin/pip" install --quiet --upgrade pip
if [ -n "$WHEEL" ]; then
    run "$PREFIX/venv/bin/pip" install --quiet --upgrade "$WHEEL"
else
    run "$PREFIX/venv/bin/pip" install --quiet --upgrade "$SOURCE"
fi

# -- /etc/tcpmq -----------------------------------------------------------------
run install -d -m 0755 "$CONF_DIR"
run install -d -m 0700 "$CONF_DIR/credentials"
# Where `tcpmq backup` writes (the unit lets the service write there only).
run install -d -m 0700 -o tcpmq -g tcpmq /var/backups/tcpmq
if [ -e "$CONF_DIR/tcpmq.toml" ]; then
    say "$CONF_DIR/tcpmq.toml exists: kept"
else
    run install -m 0644 "$SOURCE/systemd/tcpmq.toml" "$CONF_DIR/tcpmq.toml"
fi
if [ -e "$CONF_DIR/credentials/admin-password" ]; then
    say "$CONF_DIR/credentials/admin-password exists: kept"
elif [ "$DRY_RUN" = 1 ]; then
    printf '+ %s\n' "generate a random admin password into $CONF_DIR/credentials/admin-password (mode 0600)"
else
    # 0600 from the moment it exists; 24 random bytes, base64.
    (umask 077 && head -c 24 /dev/urandom | base64 >"$CONF_DIR/credentials/admin-password")
    say "admin password generated: sudo cat $CONF_DIR/credentials/admin-password"
fi
# A config file the broker would refuse stops here, before the service is restarted.
if [ "$DRY_RUN" = 1 ]; then
    run "$PREFIX/venv/bin/tcpmq" config check "$CONF_DIR/tcpmq.toml"
else
    "$PREFIX/venv/bin/tcpmq" config check "$CONF_DIR/tcpmq.toml" >/dev/null
fi

# -- the unit -------------------------------------------------------------------
run install -m 0644 "$SOURCE/systemd/tcpmq.service" "$UNIT"
run systemctl daemon-reload
run systemctl enable tcpmq.service
# A restart picks up an upgrade; the first time it is the start.
run systemctl restart tcpmq.service
say "done: systemctl status tcpmq; journalctl -u tcpmq"
