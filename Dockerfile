# syntax=docker/dockerfile:1
# Training image for Run:ai (runai/README.md): the repository at /workspace/prefix-composer (the
# scripts' RUNAI_WORKDIR) with the locked environment, without the dev group, on PATH.
#
#   docker build -t <registry>/prefix-composer:<tag> .
#
# Base: CUDA 12.6 to match the cu126 build of torch 2.7.0 in uv.lock (PyPI's Linux x86_64 wheel).
# Its CUDA libraries (cuBLAS, cuDNN 9.5, NCCL, ...) come as nvidia-*-cu12 wheels from the lock, so
# the image needs only CUDA's base layer and the host's driver, not the cudnn-runtime variant's copy.
FROM nvidia/cuda:12.6.3-base-ubuntu22.04

COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /uvx /usr/local/bin/

# Python from uv (python-build-standalone) outside /root, so the unprivileged user can run it;
# every package compiled to bytecode at install.
ENV UV_PYTHON=3.11.7 \
    UV_PYTHON_INSTALL_DIR=/opt/uv-python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PYTHONUNBUFFERED=1

WORKDIR /workspace/prefix-composer

# Dependencies first, from the lock alone: this layer is rebuilt only when uv.lock or pyproject.toml change.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv python install && \
    uv sync --frozen --extra mlflow --no-dev --no-install-project

# Then the project (installed editable: the code that runs is the repository at the working dir).
COPY README.md train.py ./
COPY prefix_composer/ prefix_composer/
COPY yamls/ yamls/
COPY scripts/ scripts/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --extra mlflow --no-dev

# Code and environment stay root-owned (read-only to the job). The working dir itself is the
# user's: llm-foundry writes a signal file there when it builds the tokenizer on several ranks.
RUN useradd --uid 1000 --create-home --shell /bin/bash trainer && \
    chown 1000:1000 /workspace/prefix-composer
# `python`, `composer` are the environment's; `uv run ...` (the docs' commands) uses it as built.
ENV VIRTUAL_ENV=/workspace/prefix-composer/.venv \
    PATH=/workspace/prefix-composer/.venv/bin:$PATH \
    UV_NO_SYNC=1
# Numeric, so Kubernetes can check runAsNonRoot.
USER 1000:1000

# PID 1 is the command Run:ai gives (the SIGTERM-forwarding launcher), not NVIDIA's entrypoint script.
ENTRYPOINT []
CMD ["bash"]
