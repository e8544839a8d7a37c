# syntax=docker/dockerfile:1
# nnserve images. Targets:
#   runtime (default)  the V2 server on CPU: the serving dependencies and service/ only (no torch, no training code)
#   runtime-gpu        the same on NVIDIA's CUDA runtime with onnxruntime-gpu, device cuda (needs a GPU to run)
#   trainer            runtime + training/ + torch (CPU) for `python -m training retrain` against a mounted repository
# Build:  podman build --format docker --network host -t nnserve .         (or docker build -t nnserve .)
# Run:    podman run -p 127.0.0.1:8080:8080 -p 127.0.0.1:8081:8081 nnserve      (HTTP, gRPC)
# docs/deploy.md has the rest (an outside repository, compose, Kubernetes, KServe, GPU).

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- the serving dependencies, in a venv
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/serve.lock /tmp/serve.lock
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-compile -r /tmp/serve.lock \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# ---------------------------------------------------------------- runtime (default target is the last one)
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/nnserve \
    NNSERVE_HOST=0.0.0.0 \
    NNSERVE_PORT=8080 \
    NNSERVE_GRPC_PORT=8081 \
    NNSERVE_MODELS=/models
# nginx fronts the gRPC port (docs/grpc.md). Text models lower-case in the C.UTF-8 locale, which glibc builds in:
# no locales package is needed (docs/text.md).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && groupadd --gid 10001 nnserve \
    && useradd --uid 10001 --gid 10001 --home-dir /home/nnserve --create-home --shell /usr/sbin/nologin nnserve
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
COPY service/ /app/service/
COPY --chown=10001:10001 models/ /models/
USER 10001:10001
EXPOSE 8080 8081
# Mount an outside model repository here (or set NNSERVE_MODELS to where it is mounted).
VOLUME ["/models"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('NNSERVE_PORT', '8080') + '/v2/health/ready', timeout=2)"]
CMD ["python", "-m", "service"]

# ---------------------------------------------------------------- runtime-gpu: lint here, build where there is a GPU
# The CUDA and cuDNN libraries come from pip (onnxruntime-gpu's cuda and cudnn extras: the versions its build needs),
# loaded by onnxruntime.preload_dlls(); the host's NVIDIA container toolkit supplies the driver.
FROM ${PYTHON_IMAGE} AS runtime-gpu
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY requirements/serve.lock /tmp/serve.lock
RUN python -m venv /opt/venv \
    && grep -v '^onnxruntime==' /tmp/serve.lock > /tmp/serve-gpu.lock \
    && ORT_VERSION="$(sed -n 's/^onnxruntime==//p' /tmp/serve.lock)" \
    && /opt/venv/bin/pip install --no-compile -r /tmp/serve-gpu.lock "onnxruntime-gpu[cuda,cudnn]==${ORT_VERSION}" \
    && groupadd --gid 10001 nnserve \
    && useradd --uid 10001 --gid 10001 --home-dir /home/nnserve --create-home --shell /usr/sbin/nologin nnserve
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/nnserve \
    NNSERVE_HOST=0.0.0.0 \
    NNSERVE_PORT=8080 \
    NNSERVE_GRPC_PORT=8081 \
    NNSERVE_MODELS=/models \
    NNSERVE_DEVICE=cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /app
COPY service/ /app/service/
COPY --chown=10001:10001 models/ /models/
USER 10001:10001
EXPOSE 8080 8081
VOLUME ["/models"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('NNSERVE_PORT', '8080') + '/v2/health/ready', timeout=2)"]
CMD ["python", "-m", "service"]

# ---------------------------------------------------------------- trainer: the CPU torch wheel comes from the context
# `make image-trainer` puts torch's CPU wheel in build/wheels/ first (PyPI's torch pulls gigabytes of CUDA).
FROM runtime AS trainer
USER 0:0
COPY build/wheels/ /tmp/wheels/
COPY pyproject.toml README.md requirements/dev.lock /src/
COPY service/ /src/service/
COPY training/ /src/training/
RUN pip install --no-cache-dir --no-compile /tmp/wheels/torch-*.whl \
    && pip install --no-cache-dir --no-compile -c /src/dev.lock "/src[train]" \
    && rm -rf /tmp/wheels /src \
    && mkdir -p /app/runs && chown 10001:10001 /app/runs
USER 10001:10001
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]

# The default target.
FROM runtime
