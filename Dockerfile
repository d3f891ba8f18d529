# hookrules container image.
#
#   docker build -t hookrules .                      # with network: dependencies come from PyPI
#   podman build --format docker -t localhost/hookrules:0.1.0 .   # podman: --format docker keeps the HEALTHCHECK
#
# Offline builds (CI has no registry and no PyPI inside the build): put the wheels of every runtime dependency,
# and setuptools to build hookrules itself, in ./wheels/ of the build context
# (`pip download --only-binary=:all: -d wheels . 'setuptools>=69'`); the build then installs from them with
# --no-index. Pass a base image you have with --build-arg BASE=... (tests/test_deploy_image.py does both).

# The base image: an official Python slim image by default. Any Debian-like image whose `python3` is 3.11 or newer
# and has the venv module will do (both stages must use the same one: the venv links to its interpreter).
ARG BASE=python:3.11-slim-bookworm

# ---- build: a virtual environment holding hookrules and its dependencies, nothing else -----------------------
FROM ${BASE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# Only what .dockerignore lets through arrives: pyproject.toml, README.md, engine/, protos/, rules/ and, for an
# offline build, wheels/.
COPY . /src

# With /src/wheels: offline, from those wheels only (--no-index). Without it: from PyPI, as pip does by default.
# pip compiles every module to bytecode as it installs, so the read-only runtime never needs to write a .pyc.
RUN python3 -m venv /opt/hookrules \
    && if [ -d /src/wheels ]; then set -- --no-index --find-links=/src/wheels; else set --; fi \
    && /opt/hookrules/bin/pip install --no-cache-dir "$@" /src \
    && /opt/hookrules/bin/hookrules check /src/rules

# ---- runtime: the venv, the rules, a numeric non-root user ----------------------------------------------------
FROM ${BASE}

ARG BASE
ARG VERSION=0.1.0
ARG REVISION=""
ARG CREATED=""

LABEL org.opencontainers.image.title="hookrules" \
      org.opencontainers.image.description="Policy for MQTT brokers: EMQX ExHook and VerneMQ webhooks answered by hot-reloaded, sandboxed rule files" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE}"

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can check it and mounted files can be owned by it.
# No home directory and no login shell: the server needs neither.
RUN groupadd --gid 10001 hookrules \
    && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin hookrules

COPY --from=build /opt/hookrules /opt/hookrules
# The bundled rules (checked in the build stage), owned by root: the server only reads them. Mount your own rules
# directory over /etc/hookrules/rules (read-only is enough: hot reload only reads).
COPY rules /etc/hookrules/rules

ENV PATH=/opt/hookrules/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOOKRULES_HEALTHZ=http://127.0.0.1:9464/healthz

USER 10001:10001
WORKDIR /etc/hookrules

# 9000: EMQX ExHook (gRPC). 8080: VerneMQ webhooks and RabbitMQ's HTTP auth. 9464: /metrics, /healthz, /readyz.
EXPOSE 9000 8080 9464

# The image has no curl: the venv's Python asks /healthz (alive, not ready: a container is not restarted for a
# broken rule). Set HOOKRULES_HEALTHZ when --metrics moves or is off (/healthz is also on the --http port).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/opt/hookrules/bin/python", "-c", \
         "import os, urllib.request; urllib.request.urlopen(os.environ['HOOKRULES_HEALTHZ'], timeout=4).close()"]

ENTRYPOINT ["hookrules"]
CMD ["serve", "--rules", "/etc/hookrules/rules"]
