#!/bin/sh
# Container and PaaS entry point: bring the schema up to date, then serve.
#
#   PORT                       listening port (default 8000), on HOST (default 0.0.0.0)
#   WEB_CONCURRENCY            worker processes (default 1)
#   GRACEFUL_SHUTDOWN_SECONDS  on SIGTERM, how long requests in flight may take (default 20)
#   PYTHON                     the interpreter to use (default: python on PATH)
#
# uvicorn's own supervisor runs the workers. (gunicorn with the uvicorn-worker package, both in
# requirements.txt, is the alternative: `gunicorn main:app -k uvicorn_worker.UvicornWorker`.)
# `exec` makes uvicorn PID 1 in a container, so `docker stop` (SIGTERM) reaches it: it stops
# accepting, closes WebSockets with 1001, lets the requests in flight finish (for at most
# GRACEFUL_SHUTDOWN_SECONDS; keep it under the container's stop timeout), drains mail, exits 0.
# --no-proxy-headers: the app alone decides the client address from FORWARDED_ALLOW_IPS (uvicorn
# would otherwise believe X-Forwarded-For from loopback); --http: request heads capped in size
# and time (http_protocol.py).
set -eu

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

"$PYTHON" manage.py migrate

exec "$PYTHON" -m uvicorn main:app \
    --host "${HOST:-0.0.0.0}" \
    --port "${PORT:-8000}" \
    --workers "${WEB_CONCURRENCY:-1}" \
    --ws-max-size 65536 \
    --timeout-graceful-shutdown "${GRACEFUL_SHUTDOWN_SECONDS:-20}" \
    --no-access-log \
    --no-proxy-headers \
    --no-server-header \
    --http http_protocol:BoundedHttpToolsProtocol
