# syntax=docker/dockerfile:1
# The Celery embedding worker on CPUs: mm-opensearch[worker] with CPU PyTorch (no CUDA libraries).
# The same image runs the one-shot `augment` service. GPUs: docker/worker-gpu.Dockerfile.
# Build from the repository root: docker build -f docker/worker.Dockerfile -t mm-opensearch-worker .

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

FROM python:3.11-slim AS worker
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MMOS_CACHE_DIR=/cache MMOS_LOG_FORMAT=json
RUN useradd --system --uid 10001 --home-dir /nonexistent mmos && mkdir /cache && chown mmos /cache
COPY requirements.lock requirements-nodeps.txt /tmp/
COPY --from=wheels /wheels /wheels
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.15.0 torchvision==0.29.2 \
    && pip install -c /tmp/requirements.lock --find-links /wheels "mm-opensearch[worker]" \
    && pip install --no-deps -r /tmp/requirements-nodeps.txt && rm -rf /wheels
USER mmos
EXPOSE 9808
CMD ["mm-opensearch", "worker", "--queues", "model,io", "--concurrency", "1"]
