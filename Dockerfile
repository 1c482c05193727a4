# Bookbag Gateway, built from this repository (docker-compose.yml builds it; see docs/deployment.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md pricing.toml requirements.lock ./
COPY gateway ./gateway
RUN pip install -c requirements.lock . \
    && useradd --system --create-home --home-dir /var/lib/bookbag bookbag

USER bookbag
# Defaults for a single container; docker-compose.yml points them at PostgreSQL and Redis.
ENV BOOKBAG_HOST=0.0.0.0 \
    BOOKBAG_PORT=8080 \
    BOOKBAG_PRICING=/app/pricing.toml \
    BOOKBAG_DATABASE_URL=sqlite:////var/lib/bookbag/bookbag.db \
    BOOKBAG_SPOOL_PATH=/var/lib/bookbag/spool.jsonl
VOLUME ["/var/lib/bookbag"]
EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=3)"]

# Migrations first (they take a lock, so replicas starting together apply them once),
# then the server in the foreground (exec: it receives SIGTERM and drains in-flight replies).
CMD ["sh", "-c", "bookbag-gateway db upgrade && exec bookbag-gateway serve --host 0.0.0.0"]
