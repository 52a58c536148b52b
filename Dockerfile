# syntax=docker/dockerfile:1
# The Blog API: `docker build -t blog-api .` then `docker compose up` (see docker-compose.yml).
FROM python:3.11-slim

# Without a DATABASE_URL of its own the container uses SQLite in the /app/data volume, where the
# generated .secret_key goes too. With PostgreSQL, set SECRET_KEY: /app is read-only.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000 \
    WEB_CONCURRENCY=1 \
    DATABASE_URL=sqlite+aiosqlite:////app/data/blog.db

WORKDIR /app

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home app

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install -r requirements.txt

# The code belongs to root and is read-only for the service; only /app/data is writable.
COPY . .
RUN mkdir -p /app/data && chown app:app /app/data && chmod 0755 docker/start.sh
VOLUME ["/app/data"]

USER app
EXPOSE 8000

# Liveness: GET / answers 200 (slim has no curl).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ.get('PORT', '8000'), timeout=4)" || exit 1

# Migrate, then `exec uvicorn main:app --workers $WEB_CONCURRENCY --port $PORT`.
CMD ["sh", "docker/start.sh"]
