# syntax=docker/dockerfile:1
# One image for every visearch service. Kubernetes picks the service per Deployment:
#   command: ["python", "-m", "services.<gateway|embedder|indexer|verifier>.main"]
# and configures it through VISEARCH_* environment variables (deploy/k8s/).
#
# Only the package itself is installed: not the [build] extra (torch, onnx: models are
# built and published from a workstation, see deploy/k8s/README.md) nor [dev].
#
#   docker build -t visearch:0.1.0 .
# GPU embedder image (CUDA and cuDNN from NVIDIA's PyPI wheels; the host needs an NVIDIA
# driver recent enough for CUDA 13 and the NVIDIA container toolkit / device plugin):
#   docker build --build-arg EXTRA_PIP="onnxruntime-gpu[cuda,cudnn]==1.31.1" \
#     -t visearch:0.1.0-gpu .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY services ./services
COPY visearch ./visearch
ARG EXTRA_PIP=""
RUN pip install . ${EXTRA_PIP}

FROM ${PYTHON_IMAGE}
# No system packages needed: the wheels bundle their native libraries (the rest, libstdc++
# and zlib, are in the slim base).
RUN groupadd --system --gid 10001 visearch \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin visearch
COPY --from=build /opt/venv /opt/venv
# CUDA/cuDNN libraries from NVIDIA's wheels (GPU build only) are not on the loader's
# path and onnxruntime's CUDA provider has no RUNPATH to them: register their folders
# with ldconfig. A no-op for the CPU build, which has none.
RUN find /opt/venv -path '*/site-packages/nvidia/*' -name 'lib*.so*' -printf '%h\n' \
        | sort -u > /etc/ld.so.conf.d/visearch-nvidia.conf \
    && ldconfig
# HOME=/tmp: the pods run with a read-only root filesystem and an emptyDir on /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /app
USER 10001:10001
# Ports by convention (each overridable with VISEARCH_GRPC_PORT): gateway 50051,
# embedder 50052, indexer 50061, verifier 50071; Prometheus metrics on 9100.
EXPOSE 50051 50052 50061 50071 9100
# No default service: every Deployment sets `command`. This default only shows the CLI.
CMD ["visearch", "--help"]
