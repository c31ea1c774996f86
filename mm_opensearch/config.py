"""One settings object for the library, the CLI, the API and the workers.

Every knob is read from the environment with the ``MMOS_`` prefix (or a ``.env`` file), so the
same deployment config drives a Celery worker and the HTTP API alike. Secrets are ``SecretStr``:
they never appear in ``repr``, logs or ``mm-opensearch config show``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

from mm_opensearch.logs import LogFormat

RESUBMIT_AFTER_S = 900.0  # above the default task time limit (600 s); the library's default too
RESEND_SCAN_LIMIT = 10_000  # queued messages per list the stall guard reads, at most (~2 KB each)
JOB_RETENTION_S = 3 * 86_400.0  # finished jobs are kept three days
SETTLED_WINDOW_S = 86_400.0  # far above the default visibility timeout (3600 s), after which redelivery happens

MASK = "****"

# user:password@ (the password may hold a raw '@': the authority ends at the last one before the path)
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s]*)@")
_SECRET_QUERY = re.compile(r"(?P<key>[?&;](?:[^=&#]*(?:pass|pwd|secret|token|key|auth)[^=&#]*)=)(?P<value>[^&#;]*)", re.I)


def mask_url(value: str) -> str:
    """``value`` with the credentials of any URL in it masked: ``http://admin:****@host``.

    A lone user part (``https://TOKEN@host``) is often a token and is masked whole; query values
    whose name suggests a secret (``?password=``) too. Text without a URL comes back unchanged.
    """
    if "://" not in value:
        return value

    def _userinfo(match: re.Match[str]) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        return f"{match['scheme']}{user}:{MASK}@" if colon else f"{match['scheme']}{MASK}@"

    return _SECRET_QUERY.sub(lambda m: f"{m['key']}{MASK}", _URL_USERINFO.sub(_userinfo, value))


def _masked(value: object) -> object:
    """A setting's value safe to print: secrets hidden, URLs without their credentials."""
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        # A URL-valued secret (MMOS_REDIS_URL) shows where it points, never its password.
        return mask_url(secret) if "://" in secret else ("**********" if secret else "")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, list | tuple):
        return [_masked(item) for item in value]
    return value


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "mm-opensearch"


class Settings(BaseSettings):
    """Configuration for connecting to OpenSearch/Redis and locating models, data and caches."""

    # hide_input_in_errors: a refused value (a URL with its password) never appears in the error text.
    model_config = SettingsConfigDict(
        env_prefix="MMOS_", env_file=".env", extra="ignore", env_ignore_empty=True, hide_input_in_errors=True
    )

    # --- OpenSearch connection -------------------------------------------------------------
    opensearch_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:9200"],
        description="Comma-separated URLs, e.g. https://search-1:9200,https://search-2:9200",
    )
    opensearch_user: str | None = Field(default=None, description="Basic-auth user (with MMOS_OPENSEARCH_PASSWORD).")
    opensearch_password: SecretStr | None = Field(default=None, description="Basic-auth password; shown masked.")
    opensearch_verify_certs: bool = Field(
        default=True, description="Verify the nodes' TLS certificates (off only for a throwaway node)."
    )
    opensearch_ca_certs: Path | None = Field(
        default=None, description="CA file (PEM) for the nodes' certificates; the system's CAs when unset."
    )
    opensearch_client_cert: Path | None = Field(default=None, description="Client certificate (PEM) for mutual TLS.")
    opensearch_client_key: Path | None = Field(default=None, description="Key (PEM) of MMOS_OPENSEARCH_CLIENT_CERT.")
    opensearch_cert_reload_s: float = Field(
        default=30.0,
        ge=0,
        description=(
            "How often the API checks MMOS_OPENSEARCH_CA_CERTS, _CLIENT_CERT and _CLIENT_KEY for new files and, "
            "when they changed and load as a set, rebuilds its client without a restart (rotation); 0 turns it off."
        ),
    )
    opensearch_aws_region: str | None = Field(
        default=None,
        description="Sign requests with AWS SigV4 for this region; credentials from boto3's chain (the 'aws' "
        "extra) or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN.",
    )
    opensearch_aws_service: Literal["es", "aoss"] = Field(
        default="es", description="SigV4 service: es (OpenSearch Service domains) or aoss (Serverless collections)."
    )
    opensearch_timeout_s: float = Field(
        default=30.0, description="Per-request timeout of the workers' and commands' client."
    )
    opensearch_max_retries: int = Field(
        default=3, description="Retries of a connection error or timeout (that client)."
    )
    opensearch_sniff: bool = Field(
        default=False,
        description="Discover the cluster's nodes from MMOS_OPENSEARCH_HOSTS at start and after a connection failure "
        "(opensearch-py sniffing). Off: only the listed hosts are used, which is right behind a load balancer or "
        "where nodes publish addresses the client cannot reach.",
    )
    opensearch_dead_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a host that failed a connection is left out before it is tried again (doubling on "
        "each further failure, at most 32 times); while out, requests go to the other hosts.",
    )
    search_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description=(
            "Deadline of one search as served (API, CLI search): both legs and the page read. A node that has not "
            "answered by then gives 503 with Retry-After; timeouts are never retried, connection errors are on "
            "another of MMOS_OPENSEARCH_HOSTS within it. The workers keep MMOS_OPENSEARCH_TIMEOUT_S."
        ),
    )
    search_preference: str | None = Field(
        default=None,
        description="The `preference` of every search (e.g. a fixed string, or _local): the same query then reads "
        "the same shard copies, so BM25 statistics, which differ between a primary and its replica, cannot reorder "
        "results from one call to the next. None: OpenSearch picks copies adaptively.",
    )
    server_fusion_on_3x: bool = Field(
        default=False,
        description=(
            "Allow fusion_path=server on OpenSearch 3.x where neural-search is installed. Untested here (Maven "
            "Central has no neural-search for 3.x, see docs/opensearch-versions.md); fusion_path=auto fuses on the "
            "client on 3.x either way."
        ),
    )
    connect_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "How long a command waits for OpenSearch and Redis to answer its first request before it stops "
            "with an error naming MMOS_OPENSEARCH_HOSTS or MMOS_REDIS_URL (later outages are retried as usual)."
        ),
    )
    opensearch_pool_maxsize: int = Field(
        default=64,
        ge=1,
        description=(
            "Connections kept open per host. opensearch-py keeps 1 unless told: every concurrent "
            "request beyond it opened and dropped a TCP connection (a serving process runs many at once)."
        ),
    )

    # --- Redis (Celery broker, result backend, checkpoints, dead letters) --------------------
    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        description="redis://[user:password@]host:port/db, rediss:// (TLS) or unix:///path; shown masked.",
    )
    redis_ca_file: Path | None = Field(
        default=None,
        description=(
            "CA certificate (PEM) that signed the Redis server's certificate, for rediss:// URLs; "
            "the system's CAs when unset."
        ),
    )

    # --- Index names ------------------------------------------------------------------------
    index_name: str = Field(default="products", description="Index (or alias) searched and written when none is given.")
    read_alias: str | None = Field(default=None, description="Alias searches go to; MMOS_INDEX_NAME when unset.")
    write_alias: str | None = Field(default=None, description="Alias writes go to; MMOS_INDEX_NAME when unset.")

    # --- Catalog schema: which document fields mean what (nothing is specific to one catalog) ---
    id_field: str = Field(default="id", description="Catalog field holding the product id (the documents' _id).")
    text_fields: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["title", "brand", "description"],
        description="BM25 fields with optional ^boost, also the text the product tower reads.",
    )
    lexical_match_type: Literal["best_fields", "most_fields", "cross_fields"] = Field(
        default="cross_fields", description="multi_match type of the BM25 leg (cross_fields: one field-blind bag)."
    )
    image_field: str | None = Field(default="image", description="Field with the image URL or path; unset: text only.")
    filter_fields: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "brand", "gender", "master_category", "sub_category", "article_type",
            "base_colour", "season", "usage", "price", "discounted_price",
        ],
        description="Fields clients may filter on (term/terms/range); anything else is refused.",
    )
    updated_at_field: str = Field(default="updated_at", description="Date field the change feed follows.")

    # --- Vector fields (k-NN): how the indices mm-opensearch creates index and search vectors ---
    knn_engine: Literal["lucene", "faiss"] = Field(
        default="lucene",
        description="k-NN engine of the vector fields: lucene (pure Java, everywhere) or faiss (native library; "
        "the dev node has none). Applies to indices mm-opensearch creates (index create, eval, demo, benches) and to "
        "the fields index augment adds (its --engine overrides it).",
    )
    knn_m: int = Field(default=16, ge=2, le=100, description="HNSW graph degree (m) of the vector fields.")
    knn_ef_construction: int = Field(
        default=128, ge=2, le=4096, description="HNSW candidate list while building the graph (ef_construction)."
    )
    knn_ef_search: int | None = Field(
        default=256, ge=1, le=10_000,
        description="HNSW candidate list of each k-NN search (the knn query's method_parameters.ef_search). 256 "
        "keeps recall@10 against exact search at 0.98 for a million products (the engine's own default, k, gave "
        "0.92-0.93; docs/benchmarks.md, Scale) at no measurable latency; an exact-only field ignores it.",
    )
    knn_encoder: Literal["none", "sq"] = Field(
        default="none",
        description="Quantization in the engine: none (float32), or sq = lucene's 7-bit scalar quantizer (the "
        "float vectors are kept too) / faiss's fp16. Measured by bench/scale.py --sweep (docs/benchmarks.md, Scale).",
    )
    knn_modality_index: Literal["auto", "hnsw", "exact"] = Field(
        default="auto",
        description="The per-modality vectors (mm_text, mm_image; --modalities) with an HNSW graph each, or exact: "
        "no graph (index.knn.advanced.approximate_threshold=-1), a knn query on them scans the filtered documents. "
        "The fused vector keeps its graph either way. auto: exact on lucene (30% less disk at 100k products, the "
        "same nDCG@10; docs/benchmarks.md, Scale), hnsw on faiss, where exact would turn the fused graph off too.",
    )

    # --- Models, caches and data ------------------------------------------------------------
    model_dir: Path | None = Field(default=None, description="Model artifact folder; default model when unset.")
    cache_dir: Path = Field(
        default_factory=_default_cache_dir, description="Jars, features and model downloads; ~/.cache/mm-opensearch."
    )
    data_dir: Path = Field(default=Path("../shared/data/myntra"), description="Sample catalog folder (demo, eval).")
    torch_threads: int | None = Field(
        default=None, description="PyTorch threads per process; PyTorch's default when unset."
    )
    query_runtime: Literal["onnx", "onnx-int8", "torch"] = Field(
        default="onnx",
        description=(
            "What encodes queries at search time on a CPU: onnx = ONNX Runtime on an export of the "
            "whole query tower (cached in cache_dir/onnx; about 2x faster, same vectors), onnx-int8 = "
            "its int8 copy (about 3x faster again; vectors ~0.99 cosine-close, nDCG@10 -0.002 on "
            "Myntra), torch = PyTorch."
        ),
    )
    product_runtime: Literal["torch", "onnx", "onnx-int8"] = Field(
        default="torch",
        description=(
            "What encodes products on a CPU (workers, index, eval): torch = PyTorch; onnx = ONNX Runtime "
            "on exports of both backbones and the heads (cached in cache_dir/onnx per model id, checked "
            "against PyTorch at cosine >= 0.999 when built); onnx-int8 = their int8 copies (cosine >= 0.99). "
            "Measured in docs/encoding.md."
        ),
    )
    decode_processes: int = Field(
        default=0, ge=0,
        description=(
            "Processes that decode and resize product images while the backbone runs; 0 = threads of "
            "the encoding process (enough when the forward, not decoding, bounds the rate)."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where the towers run: auto = CUDA when a GPU is visible, else CPU."
    )
    cuda_precision: Literal["bf16", "fp16", "float32"] = Field(
        default="bf16",
        description="Backbone precision on CUDA (bf16 where the GPU supports it, else fp16); CPUs run float32.",
    )
    image_fetch_allow_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs the image fetcher may reach although private (tests: 127.0.0.0/8).",
    )
    image_fetch_timeout_s: float = Field(
        default=5.0, gt=0,
        description="Wall-clock limit for one image download, from connect to last byte, redirects included.",
    )
    image_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma-separated folders local image paths (and file:// URLs) must resolve into, symlinks "
            "followed; anything else is refused. Empty: the catalog file's folder (index create, train, "
            "eval, demo) or MMOS_DATA_DIR (workers, augment)."
        ),
    )
    image_max_bytes: int = Field(
        default=10 * 1024 * 1024, gt=0, description="Largest image file read or downloaded, in bytes."
    )
    image_max_pixels: int = Field(
        default=40_000_000, gt=0, description="Largest width x height decoded; larger is refused as a bomb."
    )

    # --- Local development services (`mm-opensearch dev up`) ---------------------------------
    dev_dir: Path = Field(default=Path(".mmos"), description="Node data, logs and pid files.")
    dev_opensearch_port: int = Field(default=9200, description="HTTP port of the dev node.")
    dev_opensearch_transport_port: int = Field(default=9300, description="Transport port of the dev node.")
    dev_opensearch_heap: str = Field(default="1g", description="JVM heap of the dev node (-Xms/-Xmx), e.g. 640m.")
    dev_opensearch_version: str = Field(
        default="2.19.1",
        pattern=r"^[23]\.\d+\.\d+$",
        description="OpenSearch release of the dev node: 2.x (k-NN + neural-search) or 3.x (k-NN; Maven Central "
        "has no neural-search for 3.x). Tested: 2.19.1 and 3.4.0.",
    )
    dev_opensearch_nodes: int = Field(
        default=1,
        ge=1,
        le=9,
        description="Nodes of the dev cluster (dev up --nodes): 1 is a single-node cluster; more start one JVM each "
        "on loopback, all cluster-manager eligible, node i on MMOS_DEV_OPENSEARCH_PORT+i and TRANSPORT_PORT+i.",
    )
    dev_redis_port: int = Field(default=6379, description="Port of the dev Redis.")
    dev_java_home: Path | None = Field(
        default=None, description="JDK for the dev node; else JAVA_HOME, java on PATH, /usr/lib/jvm."
    )
    dev_opensearch_secure: bool = Field(
        default=False,
        description="Start the dev node with the security plugin: TLS on HTTP and transport, basic and "
        "client-certificate auth, certificates and the admin password under MMOS_DEV_DIR (dev up --secure).",
    )

    # --- Workers and backfill (Celery on Redis) ----------------------------------------------
    log_format: LogFormat = Field(default="text", description="text (people) or json (one object per line).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Level of our loggers (services); DEBUG also shows tracebacks and client logs."
    )

    worker_task_time_limit_s: int = Field(
        default=600, gt=0, description="Hard limit for one batch task; the worker process is killed past it."
    )
    worker_visibility_timeout_s: int = Field(
        default=3600, gt=0, description="Redis redelivers an unacknowledged task after this; must exceed the hard limit."
    )
    worker_max_retries: int = Field(
        default=30, ge=0,
        description="Most retries of a batch on transient errors (cluster or Redis unreachable, 429, 502-504, write "
        "blocks) before it goes to the dead letters; MMOS_WORKER_RETRY_BUDGET_S usually ends them first.",
    )
    worker_retry_budget_s: float = Field(
        default=600.0, ge=0,
        description="How long a batch keeps retrying transient errors, from its first failure: the longest outage "
        "of OpenSearch or Redis a backfill rides out without dead letters.",
    )
    worker_retry_backoff_max_s: float = Field(
        default=60.0, gt=0,
        description="Cap of the exponential retry backoff (1, 2, 4 ... s, half of each random); the visibility "
        "timeout must exceed it plus the task time limit, as a retry waits in a worker unacknowledged.",
    )
    worker_metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve the worker's Prometheus metrics (all its processes) here."
    )
    worker_metrics_host: str = Field(default="127.0.0.1", description="Address the worker metrics bind to.")
    backfill_batch_size: int = Field(default=64, gt=0, description="Products per embedding task.")
    backfill_resubmit_after_s: float = Field(
        default=RESUBMIT_AFTER_S, gt=0,
        description="A batch unsettled this long, overtaken by later ones or in a stalled job, is presumed lost by "
        "the broker and sent again by whoever watches the job; must exceed the task time limit.",
    )
    backfill_resend_scan_limit: int = Field(
        default=RESEND_SCAN_LIMIT, gt=0,
        description="Before sending a batch presumed lost, the watcher looks for its message in the broker: at most "
        "this many of the oldest queued messages per queue (plus those taken by workers). A batch not found among "
        "them in a longer queue is presumed still queued, not sent again.",
    )
    job_retention_s: float = Field(
        default=JOB_RETENTION_S, gt=0,
        description="A finished job's record (counters, errors, in-flight and settled batches) and an unpolled "
        "change-feed checkpoint are deleted from Redis this long after; dead letters are kept until retried or "
        "deleted.",
    )
    job_settled_window_s: float = Field(
        default=SETTLED_WINDOW_S, gt=0,
        description="How long the open-ended change-feed job remembers a settled batch, so a redelivered one counts "
        "once; older ones are pruned. Must exceed MMOS_WORKER_VISIBILITY_TIMEOUT_S (redelivery comes after it).",
    )

    # --- HTTP API ---------------------------------------------------------------------------
    api_key: SecretStr | None = Field(
        default=None, description="When set, /search and /metrics require it in the X-API-Key header."
    )
    api_max_body_bytes: int = Field(
        default=64 * 1024,
        gt=0,
        description="Largest request body the API reads, in bytes; a larger one gets a 413 before it is parsed.",
    )

    # --- Search page (`mm-opensearch serve` at /) --------------------------------------------
    page_queries: Path | None = Field(
        default=None,
        description="Judged queries (the `eval` TSV: query_id, query) the search page offers; needs page_qrels.",
    )
    page_qrels: Path | None = Field(
        default=None, description="Graded labels (the `eval` TSV: query_id, product_id, grade) for page_queries."
    )
    page_thumbnail_px: int = Field(
        default=160, ge=16, le=1024, description="Longest side of the page's image thumbnails, in pixels."
    )
    page_thumbnail_cache: int = Field(
        default=2048, ge=0, description="Thumbnails the API process keeps in memory (0: resize every time)."
    )

    @field_validator(
        "opensearch_hosts", "image_fetch_allow_networks", "image_roots", "text_fields", "filter_fields",
        mode="before",
    )
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("opensearch_hosts", mode="after")
    @classmethod
    def _hosts_are_urls(cls, hosts: list[str]) -> list[str]:
        if not hosts:
            msg = "names no host; write one URL or several, comma-separated, e.g. https://search-1:9200"
            raise ValueError(msg)
        for entry in hosts:
            candidate = entry if "://" in entry else f"http://{entry}"  # opensearch-py also takes host:port
            try:
                parts = urlsplit(candidate)
                parts.port  # noqa: B018 - raises on a port that is not a number
            except ValueError:
                parts = None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or " " in entry:
                msg = (
                    f"entry '{mask_url(entry)}' is not an OpenSearch URL; write http(s)://host:port, "
                    "comma-separated for several, e.g. https://search-1:9200,https://search-2:9200"
                )
                raise ValueError(msg)
        return hosts

    @field_validator("redis_url", mode="after")
    @classmethod
    def _redis_url_scheme(cls, url: SecretStr) -> SecretStr:
        value = url.get_secret_value()
        if not value.startswith(("redis://", "rediss://", "unix://")):
            msg = f"'{mask_url(value)}' is not a Redis URL; write redis://host:6379/0, rediss://... (TLS) or unix:///path"
            raise ValueError(msg)
        return url

    @model_validator(mode="after")
    def _windows_above_the_limits(self) -> Settings:
        if self.backfill_resubmit_after_s <= self.worker_task_time_limit_s:
            msg = (
                f"MMOS_BACKFILL_RESUBMIT_AFTER_S ({self.backfill_resubmit_after_s:g} s) must exceed "
                f"MMOS_WORKER_TASK_TIME_LIMIT_S ({self.worker_task_time_limit_s} s), or a batch still running is "
                "sent again; raise the first or lower the second"
            )
            raise ValueError(msg)
        if self.job_settled_window_s <= self.worker_visibility_timeout_s:
            msg = (
                f"MMOS_JOB_SETTLED_WINDOW_S ({self.job_settled_window_s:g} s) must exceed "
                f"MMOS_WORKER_VISIBILITY_TIMEOUT_S ({self.worker_visibility_timeout_s} s), or a batch redelivered after "
                "the visibility timeout counts twice in the change feed's job; raise the first or lower the second"
            )
            raise ValueError(msg)
        if self.knn_engine == "faiss" and self.knn_modality_index == "exact":
            raise ValueError(EXACT_ON_FAISS)
        return self

    def image_roots_or(self, default: Path) -> tuple[Path, ...]:
        """The folders local images may be read from: ``MMOS_IMAGE_ROOTS``, else *default*.

        *default* is the folder the caller reads products from (a catalog file's folder, or the
        data dir of the workers), so a catalog's own images load without any setting.
        """
        return tuple(self.image_roots) or (default,)

    @property
    def jar_cache_dir(self) -> Path:
        """Jars fetched from Maven Central for the dev node's version: shared by every clone on the machine."""
        return self.cache_dir / f"opensearch-{self.dev_opensearch_version}"

    def redacted(self) -> dict[str, object]:
        """The settings as a dict that is safe to print: secrets and the credentials inside URLs masked."""
        return {name: _masked(value) for name, value in self}

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr() lands in logs and tracebacks: the same masking as config show.
        for name, value in super().__repr_args__():
            yield name, value if isinstance(value, SecretStr) else _masked(value)


EXACT_ON_FAISS = (
    "MMOS_KNN_MODALITY_INDEX=exact cannot be used with MMOS_KNN_ENGINE=faiss: exact-only fields turn native graph "
    "building off for the whole index (approximate_threshold -1), and faiss would then build no graph for the "
    "fused vector either; use MMOS_KNN_ENGINE=lucene or MMOS_KNN_MODALITY_INDEX=hnsw"
)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once from the environment."""
    return Settings()
