# syntax=docker/dockerfile:1
# The one kubeagents image: every process of the product (`kubeagents proxy`, `kubeagents probe`,
# `kubeagents runtime`, `kubeagents task …`) runs from it; the charts pick the process by command.
#
#   docker build -t kubeagents:0.1.0 .
#   docker run --rm kubeagents:0.1.0 proxy --help
#
# Two stages on the same slim Python base: the builder installs exactly the locked dependencies
# (uv.lock) and the project into a virtual environment; the final stage copies only that
# environment. No compiler, no uv and no pip reach the final image. tests/charts/test_image.py
# checks this file (versions, flags, user) and runs the builder's install steps.

# Pinned patch release; the same base in both stages, because the environment's `python` links
# to the base image's interpreter.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

# The uv release the project pins in tests/tools.toml (a test keeps the two equal).
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
    "uv==${UV_VERSION}"

# Byte-compile at install (processes start from .pyc; the final image's root filesystem is
# read-only), copy files instead of hard-linking from uv's cache, never download a Python, and
# trust the system's CA bundle like pip does (not only uv's own roots), so a build behind a
# TLS-intercepting proxy works when that proxy's CA is mounted over the bundle.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_SYSTEM_CERTS=1 \
    UV_PROJECT_ENVIRONMENT=/opt/kubeagents/venv

WORKDIR /src

# Dependencies first, in their own layer: it changes only with uv.lock.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-project --no-editable

# Then the project: one distribution, one import package per source root (pyproject.toml,
# [tool.hatch.build.targets.wheel]). Installed as a wheel (--no-editable), so /src is not needed
# at run time.
COPY kubeagents ./kubeagents
COPY sidecar ./sidecar
COPY probe ./probe
COPY runtime ./runtime
COPY operator ./operator
# --reinstall-package: uv caches the wheel it built from /src by pyproject.toml alone, so without
# it a build with changed sources but the same pyproject.toml installs the previous code.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable --reinstall-package kubeagents


FROM ${PYTHON_IMAGE}

# Declared before the first FROM; declared again to use it in a label.
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="kubeagents" \
      org.opencontainers.image.description="AI agents on Kubernetes: the LLM proxy sidecar, the semantic probe, the agent runtime and the task CLI in one image." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# A numeric non-root user, so Kubernetes can check runAsNonRoot without a name lookup, and no
# pip or setuptools: the image installs nothing at run time.
RUN groupadd --system --gid 10001 kubeagents \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin kubeagents \
 && python -m pip uninstall --yes --quiet pip setuptools wheel \
 # On a Debian-packaged Python (the local base of tests/harness/images.py) pip silently leaves
 # Debian's own pip, setuptools and wheel in place, so those packages are purged with dpkg.
 && if dpkg-query --show python3-pip >/dev/null 2>&1; then \
      dpkg --purge python3-pip python3-setuptools python3-wheel python3-pkg-resources; \
    fi

COPY --from=builder /opt/kubeagents/venv /opt/kubeagents/venv

ENV PATH=/opt/kubeagents/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001
ENTRYPOINT ["kubeagents"]
CMD ["--help"]
