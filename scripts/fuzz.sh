#!/usr/bin/env bash
# `make fuzz`: Schemathesis against a real uvicorn on a free loopback port, on a throw-away
# migrated SQLite database, once anonymous and once signed in. Bounded in time: FUZZ_MAX_EXAMPLES
# per operation and FUZZ_MAX_TIME seconds per pass (about 5 minutes in all). It passes or fails on
# the contract's checks (no server error; status codes, content types, bodies and headers as
# documented); FUZZ_CHECKS=all adds the exploratory ones, which also flag answers the contract
# asks for (412 for a stale If-Match, 422 IDEMPOTENCY_KEY_REUSED, 413 over 1 MiB).
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-100}
MAX_TIME=${FUZZ_MAX_TIME:-150}
CHECKS=${FUZZ_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance}
workdir=$(mktemp -d "${TMPDIR:-/tmp}/blog-fuzz.XXXXXX")
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" && wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT

port=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
export DATABASE_URL="sqlite+aiosqlite:///$workdir/blog.db"
export SECRET_KEY="fuzz-secret-key-that-is-long-enough-0123456789"
export ENVIRONMENT=test RATE_LIMIT_ENABLED=false LOG_LEVEL=WARNING LOG_FORMAT=text
unset REDIS_URL SMTP_HOST FIRST_ADMIN_USERNAME CORS_ORIGINS

"$BIN/python" manage.py migrate >"$workdir/migrate.log" 2>&1 || { cat "$workdir/migrate.log"; exit 1; }
"$BIN/uvicorn" main:app --host 127.0.0.1 --port "$port" --no-access-log --log-level warning \
    --no-proxy-headers --no-server-header --http http_protocol:BoundedHttpToolsProtocol \
    >"$workdir/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
    curl -fsS "$base/" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$workdir/server.log"; exit 1; }
    sleep 0.1
done

# A signed-in user with a post and a comment, so some generated ids hit real objects.
curl -fsS -o /dev/null -H 'Content-Type: application/json' "$base/auth/register" \
    -d '{"username": "fuzzer", "email": "fuzzer@example.com", "password": "password123"}'
token=$(curl -fsS "$base/auth/login" -d 'username=fuzzer&password=password123' |
    "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
post_id=$(curl -fsS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    "$base/posts" -d '{"title": "Seed", "content": "Seed post"}' |
    "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["id"])')
curl -fsS -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    "$base/posts/$post_id/comments" -d '{"text": "Seed comment"}'

status=0
# One worker: Hypothesis describing strategies from several threads can trip a CPython 3.11
# `ast` race ("AST constructor recursion depth mismatch"), a tool error rather than a finding.
run() {
    local label=$1
    shift
    echo "=== schemathesis: $label ==="
    "$BIN/schemathesis" run "$base/openapi.json" --checks "$CHECKS" --max-examples "$MAX_EXAMPLES" \
        --max-time "$MAX_TIME" --request-timeout 10 --seed 1 --workers 1 "$@" |
        cut -c1-1000 || status=1  # the reproduction of a >1 MiB body is a megabyte-long line
}
run anonymous
run signed-in --header "Authorization: Bearer $token"

if grep -q "Traceback" "$workdir/server.log"; then
    echo "=== server tracebacks ==="
    cat "$workdir/server.log"
    status=1
fi
exit $status
