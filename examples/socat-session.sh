#!/usr/bin/env bash
# A real session with the control socket, using only socat and nc: deploy progress streaming,
# list, a failed deploy's ERR line, pause and resume. It starts its own proxy (a free port, a
# temporary socket and state directory) and a tiny upstream, and stops both at the end.
#
#   examples/socat-session.sh            # needs kproxy installed, socat; nc (openbsd) optional
set -euo pipefail

WORK=$(mktemp -d)
SOCK=$WORK/kproxy.sock
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port)
APP_PORT=$(free_port)

cleanup() {
    kill "${PROXY_PID:-}" "${APP_PID:-}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/app" && echo "hello from the app" > "$WORK/app/index.html" && echo ok > "$WORK/app/up"
python3 -m http.server "$APP_PORT" --bind 127.0.0.1 --directory "$WORK/app" >/dev/null 2>&1 &
APP_PID=$!
kproxy run --bind 127.0.0.1 --http-port "$HTTP_PORT" --https-port "$(free_port)" \
    --socket "$SOCK" --state-dir "$WORK/state" > "$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done

show() { printf '\n$ %s\n' "$*"; }

# socat stops reading 0.5 s after its input ends unless -t says otherwise: a deploy needs longer.
show "printf 'deploy web --target 127.0.0.1:$APP_PORT\nlist\n' | socat -t 60 - UNIX-CONNECT:\$SOCK"
printf 'deploy web --target 127.0.0.1:%s --health-check-interval 200ms\nlist\n' "$APP_PORT" \
    | socat -t 60 - "UNIX-CONNECT:$SOCK"

show "curl -s localhost:$HTTP_PORT/"
curl -s "http://127.0.0.1:$HTTP_PORT/"

show "echo 'deploy web --target 127.0.0.1:1 --deploy-timeout 2s' | socat -t 60 - UNIX-CONNECT:\$SOCK"
echo 'deploy web --target 127.0.0.1:1 --deploy-timeout 2s' | socat -t 60 - "UNIX-CONNECT:$SOCK"

show "printf 'pause web --max-pause 10s\nresume web\n' | socat -t 60 - UNIX-CONNECT:\$SOCK"
printf 'pause web --max-pause 10s\nresume web\n' | socat -t 60 - "UNIX-CONNECT:$SOCK"

if command -v nc >/dev/null && nc -h 2>&1 | grep -q 'OpenBSD netcat'; then
    # nc -N half-closes when its input ends, then prints answers until the proxy closes.
    show "printf 'list --json\nversion\n' | nc -N -U \$SOCK"
    printf 'list --json\nversion\n' | nc -N -U "$SOCK"
else
    echo "(OpenBSD nc not installed: skipping the netcat part)"
fi
