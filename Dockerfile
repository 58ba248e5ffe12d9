# The egress gateway as a sidecar image.
#
#   docker build -t egress-gateway .                         (or podman build --format docker ...)
#   docker build --build-arg BASE=debian:bookworm-slim .     any Debian bookworm base: Python comes from Debian
#
# Config: mount a folder at /etc/gateway holding config.toml with routes/ and transforms/ beside it;
# secrets come from the environment or mounted files ("env:NAME", "file:/path"), never from the image.
# Builds that need a private index or a proxy CA pass them as secrets, which no layer keeps:
#   --secret id=pip.conf,src=PIP_CONF   --secret id=ca.crt,src=CA_BUNDLE   (scripts/container does so)
ARG BASE=python:3.12-slim-bookworm

# Python from the base when it has one (the official images), else Debian's python3 (a plain bookworm).
FROM ${BASE} AS python
RUN if ! command -v python3 >/dev/null 2>&1; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates \
      && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log; \
    fi \
    && groupadd --gid 10001 gateway \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
         --no-log-init gateway

FROM python AS build
# Debian's python3 has no venv module (ensurepip) without python3-venv; the build stage alone gets it.
RUN if ! python3 -m venv /opt/gateway >/dev/null 2>&1; then \
      rm -rf /opt/gateway && apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv \
      && python3 -m venv /opt/gateway; \
    fi
WORKDIR /src
# The dependencies first, from pyproject.toml alone, so a change to the code does not reinstall them.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \
    if [ -s /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi; \
    if [ -s /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi; \
    python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
      > /tmp/requirements.txt \
    && /opt/gateway/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt
COPY README.md ./
COPY gateway ./gateway
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \
    if [ -s /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi; \
    if [ -s /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi; \
    /opt/gateway/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps . \
    && /opt/gateway/bin/python -m pip uninstall -y -q setuptools pip \
    && /opt/gateway/bin/python -m compileall -q /opt/gateway >/dev/null

FROM python
COPY --from=build /opt/gateway /opt/gateway
# The shipped example (sandbox vendor, billing routes and transforms): replaced by mounting a folder here.
COPY config.toml /etc/gateway/config.toml
COPY routes /etc/gateway/routes
COPY transforms /etc/gateway/transforms
COPY --chmod=0755 deploy/container/entrypoint /usr/local/bin/gateway-entrypoint
COPY --chmod=0755 deploy/container/probe /usr/local/bin/gateway-probe
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_PROBE_URL=http://127.0.0.1:8080
# Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
# GATEWAY_PROBE_URL: the gateway's own base URL, for a config that listens elsewhere.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["gateway-probe", "/_gateway/health"]
# Exec form: the gateway is PID 1 (the entrypoint execs it), so SIGTERM reaches it and drains.
ENTRYPOINT ["gateway-entrypoint"]
CMD ["run", "--config", "/etc/gateway/config.toml"]
