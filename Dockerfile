# syntax=docker/dockerfile:1
# One image recipe for every CRM service, built from the repository root so the workspace libraries
# (libs/kit, libs/contracts with its generated code) and the one lock file are in the context:
#
#   docker build --build-arg SERVICE=identity -t crm-identity .
#
# SERVICE is identity, customers, sales, marketing, servicedesk, notifications, reporting or gateway
# (package crm-<SERVICE> in services/<SERVICE>, module crm_<SERVICE>).

# checkov:skip=CKV_DOCKER_2:Kubernetes probes the standard gRPC health service (HTTP /healthz for the gateway) itself; a Docker HEALTHCHECK is ignored there

# ---- build: resolve exactly what uv.lock says for one service, into /app/.venv -------------------------
# Both stages use the same base, so the venv's interpreter path (/usr/local/bin/python3.11) exists at run time.
FROM python:3.11-slim-bookworm AS build
ARG SERVICE
RUN test -n "${SERVICE}" || (echo "build with --build-arg SERVICE=<service name>" >&2 && exit 1)

ENV UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-cache-dir uv==0.13.9

WORKDIR /src
# .dockerignore lets in only what the build needs: pyproject.toml, uv.lock, libs/ and services/.
COPY . .
# --frozen: the lock file as committed, never re-resolved. --no-editable: the workspace packages are
# installed into the venv, so the final image needs no source tree. Bytecode is compiled here because
# the root filesystem is read-only at run time.
RUN --mount=type=cache,target=/root/.cache/uv \
    test -d "services/${SERVICE}" \
    && uv sync --frozen --no-dev --no-editable --package "crm-${SERVICE}" \
    && /app/.venv/bin/python -c "import crm_${SERVICE}"

# ---- runtime: the venv and nothing else --------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime
ARG SERVICE
# A fixed numeric user (the chart's runAsUser), so Kubernetes can verify runAsNonRoot without a name lookup.
RUN groupadd --system --gid 10001 crm \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin crm
COPY --from=build /app/.venv /app/.venv

ENV PATH=/app/.venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    CRM_DATA_DIR=/tmp/crm-data \
    CRM_SERVICE_NAME=${SERVICE} \
    CRM_SERVICE_MODULE=crm_${SERVICE}
LABEL org.opencontainers.image.title="crm-${SERVICE}" \
      org.opencontainers.image.description="CRM service ${SERVICE}"

USER 10001:10001
WORKDIR /tmp
# gRPC services listen on 50051, the gateway on 8000.
EXPOSE 50051 8000
STOPSIGNAL SIGTERM

# Docker does not expand build arguments inside an exec-form ENTRYPOINT, so the image's default
# runs `exec python -m crm_<SERVICE> "$@"`: the shell replaces itself with Python, which is PID 1 and
# receives SIGTERM. The Helm chart sets the exact command instead, with no shell at all:
#   ["/app/.venv/bin/python", "-m", "crm_<SERVICE>"]  with args ["serve"] or ["migrate"].
ENTRYPOINT ["/bin/sh", "-c", "exec /app/.venv/bin/python -m \"$CRM_SERVICE_MODULE\" \"$@\"", "crm"]
CMD ["serve"]
