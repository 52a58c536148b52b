#!/bin/sh
# Container and PaaS entry point: bring the schema up to date, then serve.
#
#   PORT             listening port (default 8000), on HOST (default 0.0.0.0)
#   WEB_CONCURRENCY  worker processes (default 1)
#   PYTHON           the interpreter to use (default: python on PATH)
#
# uvicorn's own supervisor runs the workers: gunicorn's `uvicorn.workers.UvicornWorker` is
# deprecated in uvicorn 0.54 in favour of the separate uvicorn-worker package, which this
# project does not depend on. `exec` makes uvicorn PID 1 in a container, so `docker stop`
# (SIGTERM) reaches it and shuts the workers down gracefully. --no-proxy-headers: the app alone
# decides the client address from FORWARDED_ALLOW_IPS (uvicorn would otherwise believe
# X-Forwarded-For from loopback); --http: request heads capped in size and time (http_protocol.py).
set -eu

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

"$PYTHON" manage.py migrate

exec "$PYTHON" -m uvicorn main:app \
    --host "${HOST:-0.0.0.0}" \
    --port "${PORT:-8000}" \
    --workers "${WEB_CONCURRENCY:-1}" \
    --ws-max-size 65536 \
    --no-access-log \
    --no-proxy-headers \
    --no-server-header \
    --http http_protocol:BoundedHttpToolsProtocol
