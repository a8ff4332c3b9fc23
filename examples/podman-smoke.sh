#!/usr/bin/env bash
# Build the kproxy image and use it as a user (and Kamal) would: run it on ports 80/443, deploy
# an upstream with `podman exec ... kamal-proxy deploy`, send requests, check that `podman stop`
# drains and exits promptly, and that state survives a restart on the volume.
#
#   examples/podman-smoke.sh                 # needs podman; root, ports 80 and 443 free
#
# BASE: the image to build on. Default: docker.io/library/python:3.12-slim if it can be pulled,
# else a local Debian base made with debootstrap (for machines that reach no registry).
# KPROXY_SMOKE_DIR: work directory (podman storage, the local base); default /tmp/kproxy-podman.
# With CONTAINERS_CONF already set, that podman configuration is used as it is; otherwise one
# suited to a root CI machine is written (runc, ulimits, host CA bundle, host network).
set -euo pipefail
cd "$(dirname "$0")/.."

W=${KPROXY_SMOKE_DIR:-/tmp/kproxy-podman}
IMAGE=localhost/kproxy:smoke
NAME=kproxy-smoke
VOLUME=kproxy-smoke-state
mkdir -p "$W"

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

if [ -z "${CONTAINERS_CONF:-}" ]; then
    cat > "$W/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
volumes = ["/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro"]
netns = "host"
[engine]
runtime = "runc"
CONF
    printf '[storage]\ndriver = "overlay"\ngraphroot = "%s/storage"\nrunroot = "%s/run"\n' "$W" "$W" \
        > "$W/storage.conf"
    export CONTAINERS_CONF="$W/containers.conf" CONTAINERS_STORAGE_CONF="$W/storage.conf"
fi

cleanup() {
    podman rm -f "$NAME" >/dev/null 2>&1 || true
    podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
    [ -n "${UPSTREAM_PID:-}" ] && kill "$UPSTREAM_PID" 2>/dev/null || true
}
trap cleanup EXIT
cleanup

say "base image"
BASE=${BASE:-}
if [ -z "$BASE" ]; then
    if timeout 30 podman pull -q docker.io/library/python:3.12-slim >/dev/null 2>&1; then
        BASE=docker.io/library/python:3.12-slim
    else
        BASE=localhost/kproxy-base:bookworm
        if ! podman image exists "$BASE"; then
            echo "no registry reachable: making $BASE with debootstrap"
            MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
            [ -d "$W/rootfs/usr" ] || debootstrap --variant=minbase \
                --include=python3,python3-venv,ca-certificates bookworm "$W/rootfs" \
                "${MIRROR:-http://deb.debian.org/debian}" >/dev/null
            tar -C "$W/rootfs" -c . | podman import --change 'CMD ["python3"]' - "$BASE" >/dev/null
        fi
    fi
fi
echo "BASE=$BASE"

say "build"
podman build -q -t "$IMAGE" --build-arg "BASE=$BASE" -f Containerfile . >/dev/null
podman image inspect "$IMAGE" --format '{{.Config.User}} {{.Config.Cmd}} {{.Config.ExposedPorts}}'
[ "$(podman image inspect "$IMAGE" --format '{{.Config.User}}')" = kamal-proxy ] || fail "image user"
podman run --rm --entrypoint sh "$IMAGE" -c 'command -v kamal-proxy && ! command -v gcc' \
    || fail "kamal-proxy not on PATH, or build tools left in the image"

say "upstream on 127.0.0.1"
UPSTREAM_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 - "$UPSTREAM_PORT" <<'PY' &
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(3)
        body = b"hello from upstream\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
PY
UPSTREAM_PID=$!

say "run (as a user would)"
podman run -d --name "$NAME" -p 80:80 -p 443:443 \
    -v "$VOLUME:/home/kamal-proxy/.config/kamal-proxy" "$IMAGE" >/dev/null
for _ in $(seq 50); do
    curl -s -o /dev/null http://127.0.0.1:80/ && break
    sleep 0.1
done
curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:80/ | grep -qx 404 || fail "proxy not answering on :80"

say "deploy through podman exec, with Kamal's argv"
podman exec "$NAME" kamal-proxy deploy app-web --target="127.0.0.1:$UPSTREAM_PORT" \
    --deploy-timeout="30s" --drain-timeout="30s" --buffer-requests --buffer-responses \
    --log-request-header="Cache-Control" --log-request-header="Last-Modified" \
    --log-request-header="User-Agent"
podman exec "$NAME" kamal-proxy list
[ "$(curl -s http://127.0.0.1:80/)" = "hello from upstream" ] || fail "request through the proxy"
podman exec "$NAME" kamal-proxy stop app-web --drain-timeout="30s" --message="Back soon"
curl -s http://127.0.0.1:80/ | grep -q "Back soon" || fail "stop message"
podman exec "$NAME" kamal-proxy resume app-web
[ "$(curl -s http://127.0.0.1:80/)" = "hello from upstream" ] || fail "resume"

say "podman stop drains and exits promptly"
curl -s -o "$W/slow.out" -w '%{http_code}' http://127.0.0.1:80/slow > "$W/slow.code" &
CURL_PID=$!
sleep 0.5
started=$(date +%s.%N)
podman stop -t 20 "$NAME" >/dev/null
stopped=$(date +%s.%N)
wait "$CURL_PID" || true
[ "$(cat "$W/slow.code")" = 200 ] || fail "in-flight request was not drained ($(cat "$W/slow.code"))"
python3 -c "import sys; t = $stopped - $started; print(f'stopped in {t:.1f}s'); sys.exit(t > 10)" \
    || fail "podman stop waited for the kill timeout"
[ "$(podman inspect "$NAME" --format '{{.State.ExitCode}}')" = 0 ] || fail "exit code"

say "state survives a restart on the volume"
podman start "$NAME" >/dev/null
for _ in $(seq 50); do
    [ "$(curl -s http://127.0.0.1:80/ 2>/dev/null)" = "hello from upstream" ] && break
    sleep 0.1
done
[ "$(curl -s http://127.0.0.1:80/)" = "hello from upstream" ] || fail "state not restored"
podman exec "$NAME" kamal-proxy list | grep -q app-web || fail "list after restart"
podman exec "$NAME" kamal-proxy remove app-web
podman logs "$NAME" 2>&1 | tail -n 3

say "podman smoke: all checks passed"
