# goodfit in a container: `docker run IMAGE finetune ...` runs `goodfit finetune ...`.
#
#   CPU image:   docker build --target cpu  -t goodfit:0.1.0 .
#   CUDA image:  docker build --target cuda -t goodfit:0.1.0-cuda .    (run with --gpus all)
#   pip elsewhere: docker build --build-arg PIP_INDEX_URL=https://mirror.example/simple ...
#
# One Dockerfile, two images that differ only in the torch build. Both pin the same torch and
# torchvision release: the cpu target installs that release's CPU builds (`+cpu`, from PyTorch's
# CPU index), the cuda target the PyPI builds, which carry their CUDA libraries as wheels (the
# driver comes from the host), plus the C compiler triton needs for compiled steps. Each image's
# last step runs docker/check-stack.py as the image's user, which imports torchvision's compiled
# ops (nms on three boxes), timm, optuna and goodfit and fails the build otherwise: a
# torchvision built for another torch cannot become an image. The builders install goodfit's
# wheel, built from the sources, with the `search` extra into a venv; the images receive only
# the venv.
# Checked without an engine by tests/test_docker.py; built and run for real by
# docker/build-local.sh (docs/ci.md).

ARG BASE=python:3.11-slim-bookworm
# The release the tests run on, for both images; tests/test_docker.py fails when these part
# from pyproject.toml, from the tests' torch or from docker/build-local.sh.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG VERSION=0.1.0

# ---------------------------------------------------------------------------------- wheel
FROM ${BASE} AS wheel

# Where pip looks (air-gapped or proxied builds); unset, pip uses PyPI. A build argument reaches
# the RUN lines as an environment variable, which pip reads; it is not kept in the image's
# environment, but `docker history` shows it: put credentials in a secret instead (docs/ci.md).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ARG PIP_CERT

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The wheel carries the package and its shipped recipes; it is built in isolation (the build
# requirements live in a temporary environment).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY goodfit_cli ./goodfit_cli
COPY recipes ./recipes
COPY docker/check-stack.py ./docker/
RUN pip wheel --no-deps --wheel-dir /dist .

# ---------------------------------------------------------------------------------- builders
# torch and torchvision first, from the pinned release; then goodfit's wheel and its
# dependencies with the pair held (a dependency cannot swap it). The proof is run in the images
# below, on exactly what they hold. A stage sees only the build arguments it declares, hence
# pip's again.
FROM wheel AS builder-cpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ARG TORCH_VERSION
ARG TORCHVISION_VERSION
ARG VERSION
# The CPU builds: a torch of ~200 MB instead of several GB of CUDA libraries.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG CPU_LOCAL=+cpu
RUN printf 'torch==%s\ntorchvision==%s\n' "${TORCH_VERSION}${CPU_LOCAL}" \
        "${TORCHVISION_VERSION}${CPU_LOCAL}" > /opt/venv/torch-pins.txt \
    && pip install --index-url "${TORCH_CPU_INDEX}" -r /opt/venv/torch-pins.txt \
    && pip install -c /opt/venv/torch-pins.txt "/dist/goodfit-${VERSION}-py3-none-any.whl[search]" \
    && cp /src/docker/check-stack.py /opt/venv/check-stack.py

FROM wheel AS builder-cuda
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ARG TORCH_VERSION
ARG TORCHVISION_VERSION
ARG VERSION
RUN printf 'torch==%s\ntorchvision==%s\n' "${TORCH_VERSION}" "${TORCHVISION_VERSION}" \
        > /opt/venv/torch-pins.txt \
    && pip install -r /opt/venv/torch-pins.txt \
    && pip install -c /opt/venv/torch-pins.txt "/dist/goodfit-${VERSION}-py3-none-any.whl[search]" \
    && cp /src/docker/check-stack.py /opt/venv/check-stack.py

# ---------------------------------------------------------------------------------- runtime
FROM ${BASE} AS runtime

ARG VERSION
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
RUN groupadd --gid 10001 goodfit \
    && useradd --no-log-init --create-home --uid 10001 --gid goodfit goodfit \
    && mkdir /workspace \
    && chown goodfit:goodfit /workspace

# torch.compile builds native code in both images: on the CPU inductor compiles C++ with g++,
# on the GPU triton compiles a small launcher with the C compiler; both with Python's headers
# (the slim bases have them, a Debian python3 base gets them here). So a recipe's
# `compile: true` runs on a CPU runner as on a GPU one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
    && if [ ! -e "$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; \
       then apt-get install -y --no-install-recommends python3-dev; fi \
    && rm -rf /var/lib/apt/lists/*

# Numeric, so that Kubernetes runAsNonRoot can verify it and `docker run --user` is easy to match.
USER 10001:10001
WORKDIR /workspace

# A command-line tool, not a service: nothing to probe.
HEALTHCHECK NONE

ENTRYPOINT ["goodfit"]
CMD ["--help"]

# ---------------------------------------------------------------------------------- cuda
FROM runtime AS cuda
COPY --from=builder-cuda /opt/venv /opt/venv
# What the NVIDIA container toolkit exposes when a runner does not set it (--gpus all does).
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
LABEL dev.goodfit.torch-build="cuda"
USER 10001:10001
# The proof, as the image's user: the build fails unless torchvision's compiled ops, timm,
# optuna, goodfit, triton's C compiler and a compiled CPU function work here
# (docker/check-stack.py; --gpu on a GPU).
ARG TORCH_VERSION
ARG TORCHVISION_VERSION
RUN python /opt/venv/check-stack.py cuda "${TORCH_VERSION}" "${TORCHVISION_VERSION}" --compile

# ---------------------------------------------------------------------------------- cpu
# The last stage, so a plain `docker build .` makes the CPU image.
FROM runtime AS cpu
COPY --from=builder-cpu /opt/venv /opt/venv
LABEL dev.goodfit.torch-build="cpu"
ARG TORCH_VERSION
ARG TORCHVISION_VERSION
RUN python /opt/venv/check-stack.py cpu "${TORCH_VERSION}" "${TORCHVISION_VERSION}" --compile
