# aiosrv container image (docs/containers.md).
#
#   docker build -t websocket-server:latest .
#   docker run -d --name websocket-server -p 8765:8765 -p 8080:8080 websocket-server:latest
#
# Two stages: `builder` compiles the Cython core into aiosrv's wheel and
# collects the wheels of every dependency (with the redis extra); the runtime
# stage has no compiler: it installs those wheels offline into a venv and runs
# `aiosrv serve` as the unprivileged user `websocket` (uid 10001).
#
# tests/ops/test_container.py lints this file with hadolint and runs its
# steps for real: the RUN lines of both stages (all but the apt-get and
# user-creation lines, which only make sense inside the image) in fresh venvs,
# then CMD with this file's ENV, the HEALTHCHECK and STOPSIGNAL; it also
# checks that ENV sets no configuration variable. Keep absolute paths in RUN
# lines behind the ARG/ENV variables below: the test relocates them into a
# temporary directory.

FROM python:3.11-slim-bookworm AS builder

# build-essential 12.9 is bookworm's (gcc, libc6-dev, make); the Python
# headers come with the python image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 \
    && rm -rf /var/lib/apt/lists/*

ARG WHEELS=/wheels
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
# The project's build inputs only (.dockerignore keeps the rest of the
# context small): setup.py compiles aiosrv/_fanout_py.py and _core/ with the
# Cython that pyproject.toml pins, in pip's isolated build environment.
COPY pyproject.toml setup.py README.md ./
COPY _core/ _core/
COPY aiosrv/ aiosrv/
# aiosrv's wheel, compiled core included, and a wheel of every dependency,
# so that the runtime stage installs offline and needs no compiler.
RUN python -m pip wheel --wheel-dir "$WHEELS" ".[redis]"


FROM python:3.11-slim-bookworm AS runtime

ARG WHEELS=/wheels
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv
ENV PATH="$VIRTUAL_ENV/bin:$PATH"

COPY --from=builder $WHEELS $WHEELS
# --no-index: the builder's wheels are the only candidates, so what is
# installed is exactly what the builder resolved.
RUN python -m venv "$VIRTUAL_ENV" \
    && "$VIRTUAL_ENV/bin/pip" install --no-index --find-links "$WHEELS" "aiosrv[redis]" \
    && rm -rf "$WHEELS"

# A fixed uid (10001), so that a bind-mounted logs directory can be given
# to it (docs/containers.md) and USER can be numeric (Kubernetes'
# runAsNonRoot checks a numeric user). It may write /app/logs only.
RUN groupadd --system --gid 10001 websocket \
    && useradd --system --uid 10001 --gid websocket --home-dir /app \
        --no-create-home --shell /usr/sbin/nologin websocket \
    && install -d -m 0755 /app \
    && install -d -o websocket -g websocket -m 0755 /app/logs

WORKDIR /app
# The default configuration, readable (not writable) by the server; mount a
# directory over /app/config to replace it (the guide's -v $(pwd)/config:/app/config).
COPY config/deployment.yaml config/deployment.yaml

# The configuration is the file AIOSRV_CONFIG names, then the environment
# over it, then flags (README's table). The image sets no configuration
# variable: an environment variable would beat a mounted file (-v
# $(pwd)/config:/app/config, a Kubernetes ConfigMap), so the file decides,
# and the shipped one listens on 0.0.0.0:8765, 8080 and 9090 (the ports
# EXPOSEd below). `docker run -e WEBSOCKET_PORT=...` and the like still
# override it. AIOSRV_EXPECT_COMPILED=1: the server refuses to start on the
# pure-Python core instead of running several times slower without saying so.
ENV AIOSRV_CONFIG=/app/config/deployment.yaml \
    AIOSRV_EXPECT_COMPILED=1

USER 10001:10001

EXPOSE 8765 8080 9090

# `aiosrv health` loads the configuration as `aiosrv serve` does (the file,
# the environment, flags), so it asks GET /health on the configured API port
# on loopback (https when security.ssl_certfile is set), without proxies.
# 200 (healthy) exits 0; a 503 (degraded: broker down, queue full; unhealthy:
# draining), a refused connection or no answer within its own 4 s timeout
# exits 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["aiosrv", "health"]

# SIGTERM drains (clients get 1001) and exits 0 within shutdown.grace_period;
# give `docker stop -t` / compose's stop_grace_period more than that.
STOPSIGNAL SIGTERM

ENTRYPOINT ["aiosrv"]
CMD ["serve"]
