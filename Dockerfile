# syntax=docker/dockerfile:1
# multiwatch container image:   docker build -t multiwatch .
#
# Roster mode (recommended): one container watches every mount listed in a roster.
#   Mount the roster read-only at /etc/multiwatch/multiwatch.yaml and set
#   MULTIWATCH_CONFIG=/etc/multiwatch/multiwatch.yaml (`run -c PATH` works too, but
#   `multiwatch health` finds the endpoint through MULTIWATCH_CONFIG).
# Environment mode (the deployment guide's one container per directory): leave
#   MULTIWATCH_CONFIG unset and set INSTANCE_ID, DATA_DIR and RABBITMQ_HOST/PORT/USER/PASS.
# The password: better RABBITMQ_PASS_FILE, a file mounted read-only (a Docker or Kubernetes
#   secret), than RABBITMQ_PASS, which `docker inspect` shows.
#
# Watched directories: mount them read-only under /data/ (-v /host/music:/data/music:ro).
# State (tracked files, outbox): the volume /var/lib/multiwatch, owned by uid/gid 10001.
# The image writes nothing else, so it runs with a read-only root filesystem (--read-only).

ARG PYTHON_VERSION=3.11

# ---- build: multiwatch and all its dependencies as wheels -----------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY multiwatch ./multiwatch
RUN pip wheel --wheel-dir /wheels .

# ---- runtime ----------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MULTIWATCH_STATE_DIR=/var/lib/multiwatch
# Offline install from the build stage's wheels; the wheels themselves stay out of the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels multiwatch
RUN groupadd --system --gid 10001 multiwatch \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/multiwatch \
      --no-create-home --shell /usr/sbin/nologin multiwatch \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/multiwatch \
 && install -d -m 0755 /etc/multiwatch /data
VOLUME /var/lib/multiwatch
WORKDIR /var/lib/multiwatch
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# The HTTP endpoint (/healthz /readyz /status /metrics) when http.listen is 0.0.0.0:9120.
EXPOSE 9120
# The supervisor stops every watcher gracefully on SIGTERM (give it stop_timeout_seconds
# plus a margin: docker stop -t 30, compose stop_grace_period: 30s).
STOPSIGNAL SIGTERM
# Exit 0 when /readyz answers 200: every instance RUNNING with its broker connected.
# Runs inside the container, so the default loopback listen (127.0.0.1:9120) is enough.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["multiwatch", "health"]
ENTRYPOINT ["multiwatch"]
CMD ["run"]
