# syntax=docker/dockerfile:1
# The model worker on an NVIDIA GPU: a CUDA runtime base and PyTorch's CUDA wheels. Run one
# container per GPU (compose profile `gpu`), taking only the model queue with one process; the
# CPU worker serves the io queue (image downloads, writes).
# Build from the repository root: docker build -f docker/worker-gpu.Dockerfile -t mm-opensearch-worker-gpu .

FROM python:3.11-slim AS wheels
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY mm_opensearch ./mm_opensearch
COPY mm_opensearch_workers ./mm_opensearch_workers
COPY mappings ./mappings
COPY dev/opensearch ./dev/opensearch
COPY models/default ./models/default
RUN pip wheel --no-deps -w /wheels .

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS worker-gpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MMOS_CACHE_DIR=/cache MMOS_LOG_FORMAT=json \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv \
    && useradd --system --uid 10001 --home-dir /nonexistent mmos && mkdir /cache && chown mmos /cache
COPY requirements.lock requirements-nodeps.txt /tmp/
COPY --from=wheels /wheels /wheels
RUN pip install -c /tmp/requirements.lock --find-links /wheels "mm-opensearch[worker]" \
    && pip install --no-deps -r /tmp/requirements-nodeps.txt && rm -rf /wheels
USER mmos
CMD ["mm-opensearch", "worker", "--queues", "model", "--concurrency", "1"]
