# goodfit in a container: `docker run IMAGE finetune ...` runs `goodfit finetune ...`.
#
#   CPU (default):  docker build -t goodfit:0.1.0 .
#   CUDA:           docker build --build-arg BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime \
#                                -t goodfit:0.1.0-cuda .
#   pip elsewhere:  docker build --build-arg PIP_INDEX_URL=https://mirror.example/simple ...
#
# Both stages start from BASE, so the venv built in the first one runs in the second unchanged
# (same interpreter at the same path). The venv sees BASE's own packages: the CUDA base already
# has torch and torchvision, and they are used as they are; the slim base has none, so the
# builder installs the CPU wheels first. The builder builds goodfit's wheel from the sources and
# installs it; the runtime stage receives only the venv: no sources, no wheel, no build tools.
# Checked without an engine by tests/test_docker.py (hadolint, structure, and the builder's
# commands in a fresh venv); built and run for real by docker/build-local.sh (docs/ci.md).

ARG BASE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------- builder
FROM ${BASE} AS builder

# Used only where BASE has no torch (the slim CPU image). The version is the one the tests run
# on; tests/test_docker.py fails when the two part.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

# Where pip looks for everything else (air-gapped or proxied builds). Unset, pip uses PyPI. A
# build argument reaches the RUN lines below as an environment variable, which pip reads; it is
# not kept in the image's environment, but `docker history` shows it: put credentials in a
# secret instead (docs/ci.md).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:$PATH

RUN python -c "import torch" 2>/dev/null \
    || pip install --no-cache-dir --index-url "${TORCH_INDEX}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# The wheel carries the package and its shipped recipes; it is built in isolation (the build
# requirements live in a temporary environment) and installed with its dependencies.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY goodfit_cli ./goodfit_cli
COPY recipes ./recipes
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
    && pip install --no-cache-dir /dist/goodfit-*.whl

# ---------------------------------------------------------------------------------- runtime
FROM ${BASE} AS runtime

ARG VERSION=0.1.0
ARG SOURCE=https://github.com/goodfit/goodfit
LABEL org.opencontainers.image.title="goodfit" \
      org.opencontainers.image.description="Fine-tune a converged model without breaking what it already does; regression reports and gates." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Root owns the venv; the user owns only its home and the workspace.
COPY --from=builder /opt/venv /opt/venv

RUN groupadd --gid 10001 goodfit \
    && useradd --no-log-init --create-home --uid 10001 --gid goodfit goodfit \
    && mkdir /workspace \
    && chown goodfit:goodfit /workspace

# Numeric, so that Kubernetes runAsNonRoot can verify it and `docker run --user` is easy to match.
USER 10001:10001
WORKDIR /workspace

# A command-line tool, not a service: nothing to probe.
HEALTHCHECK NONE

ENTRYPOINT ["goodfit"]
CMD ["--help"]
