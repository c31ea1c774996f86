# syntax=docker/dockerfile:1
# The search API: mm-opensearch[api] only (ONNX Runtime + tokenizers, no PyTorch). The default
# model's query graph is exported once in a throwaway stage that has CPU torch; the final image
# gets the model folder with the graph and never sees torch.
# Build from the repository root: docker build -f docker/api.Dockerfile -t mm-opensearch-api .

FROM python:3.11-slim AS wheels
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY mm_opensearch ./mm_opensearch
COPY mm_opensearch_workers ./mm_opensearch_workers
COPY mappings ./mappings
COPY dev/opensearch ./dev/opensearch
COPY models/default ./models/default
RUN pip wheel --no-deps -w /wheels . \
    && pip wheel -c requirements.lock -w /wheels "$(ls /wheels/mm_opensearch-*.whl)[api]"

FROM python:3.11-slim AS export
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
COPY requirements.lock requirements-nodeps.txt /tmp/
COPY --from=wheels /wheels /wheels
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.15.0 torchvision==0.29.2 \
    && pip install -c /tmp/requirements.lock --find-links /wheels "mm-opensearch[model]" \
    && pip install --no-deps -r /tmp/requirements-nodeps.txt
COPY models/default /models/default
RUN mm-opensearch export-query-graph /models/default

FROM python:3.11-slim AS api
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    MMOS_MODEL_DIR=/models/default MMOS_CACHE_DIR=/cache MMOS_LOG_FORMAT=json
RUN useradd --system --uid 10001 --home-dir /nonexistent mmos && mkdir /cache && chown mmos /cache
COPY --from=wheels /wheels /wheels
RUN pip install --no-index --find-links /wheels "mm-opensearch[api]" && rm -rf /wheels
COPY --from=export /models/default /models/default
USER mmos
EXPOSE 8000
# ready = OpenSearch answers, the index exists and the model is loaded (GET /readyz)
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["mm-opensearch", "serve", "--host", "0.0.0.0", "--port", "8000"]
