"""One settings object for the library, the CLI, the API and the workers.

Every knob is read from the environment with the ``MMOS_`` prefix (or a ``.env`` file), so the
same deployment config drives a Celery worker and the HTTP API alike. Secrets are ``SecretStr``:
they never appear in ``repr``, logs or ``mm-opensearch config show``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

from mm_opensearch.logs import LogFormat

RESUBMIT_AFTER_S = 900.0  # above the default task time limit (600 s); the library's default too


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "mm-opensearch"


class Settings(BaseSettings):
    """Configuration for connecting to OpenSearch/Redis and locating models, data and caches."""

    model_config = SettingsConfigDict(env_prefix="MMOS_", env_file=".env", extra="ignore", env_ignore_empty=True)

    # --- OpenSearch connection -------------------------------------------------------------
    opensearch_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:9200"],
        description="Comma-separated URLs, e.g. https://search-1:9200,https://search-2:9200",
    )
    opensearch_user: str | None = None
    opensearch_password: SecretStr | None = None
    opensearch_verify_certs: bool = True
    opensearch_ca_certs: Path | None = None
    opensearch_client_cert: Path | None = None
    opensearch_client_key: Path | None = None
    opensearch_aws_region: str | None = Field(
        default=None, description="Sign requests with AWS SigV4 for this region (needs the 'aws' extra)."
    )
    opensearch_aws_service: Literal["es", "aoss"] = "es"
    opensearch_timeout_s: float = 30.0
    opensearch_max_retries: int = 3
    opensearch_pool_maxsize: int = Field(
        default=64,
        ge=1,
        description=(
            "Connections kept open per host. opensearch-py keeps 1 unless told: every concurrent "
            "request beyond it opened and dropped a TCP connection (a serving process runs many at once)."
        ),
    )

    # --- Redis (Celery broker, result backend, checkpoints, dead letters) --------------------
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")

    # --- Index names ------------------------------------------------------------------------
    index_name: str = "products"
    read_alias: str | None = None
    write_alias: str | None = None

    # --- Catalog schema: which document fields mean what (nothing is specific to one catalog) ---
    id_field: str = "id"
    text_fields: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["title", "brand", "description"],
        description="BM25 fields with optional ^boost, also the text the product tower reads.",
    )
    lexical_match_type: Literal["best_fields", "most_fields", "cross_fields"] = Field(
        default="cross_fields", description="multi_match type of the BM25 leg (cross_fields: one field-blind bag)."
    )
    image_field: str | None = "image"
    filter_fields: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "brand", "gender", "master_category", "sub_category", "article_type",
            "base_colour", "season", "usage", "price", "discounted_price",
        ],
        description="Fields clients may filter on (term/terms/range); anything else is refused.",
    )
    updated_at_field: str = "updated_at"

    # --- Models, caches and data ------------------------------------------------------------
    model_dir: Path | None = Field(default=None, description="Model artifact folder; default model when unset.")
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    data_dir: Path = Field(default=Path("../shared/data/myntra"))
    torch_threads: int | None = None
    query_runtime: Literal["onnx", "onnx-int8", "torch"] = Field(
        default="onnx",
        description=(
            "What encodes queries at search time on a CPU: onnx = ONNX Runtime on an export of the "
            "whole query tower (cached in cache_dir/onnx; about 2x faster, same vectors), onnx-int8 = "
            "its int8 copy (about 3x faster again; vectors ~0.99 cosine-close, nDCG@10 -0.002 on "
            "Myntra), torch = PyTorch."
        ),
    )
    image_fetch_allow_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs the image fetcher may reach although private (tests: 127.0.0.0/8).",
    )
    image_fetch_timeout_s: float = Field(
        default=5.0, gt=0, description="Wall-clock limit for one image download, redirects included."
    )
    image_max_bytes: int = Field(
        default=10 * 1024 * 1024, gt=0, description="Largest image file read or downloaded, in bytes."
    )
    image_max_pixels: int = Field(
        default=40_000_000, gt=0, description="Largest width x height decoded; larger is refused as a bomb."
    )

    # --- Local development services (`mm-opensearch dev up`) ---------------------------------
    dev_dir: Path = Field(default=Path(".mmos"), description="Node data, logs and pid files.")
    dev_opensearch_port: int = 9200
    dev_opensearch_transport_port: int = 9300
    dev_opensearch_heap: str = "1g"
    dev_redis_port: int = 6379
    dev_java_home: Path | None = None

    # --- Workers and backfill (Celery on Redis) ----------------------------------------------
    log_format: LogFormat = Field(default="text", description="text (people) or json (one object per line).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

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

    # --- HTTP API ---------------------------------------------------------------------------
    api_key: SecretStr | None = Field(
        default=None, description="When set, /search and /metrics require it in the X-API-Key header."
    )

    @field_validator(
        "opensearch_hosts", "image_fetch_allow_networks", "text_fields", "filter_fields", mode="before"
    )
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _resend_after_the_time_limit(self) -> Settings:
        if self.backfill_resubmit_after_s <= self.worker_task_time_limit_s:
            msg = (
                f"MMOS_BACKFILL_RESUBMIT_AFTER_S ({self.backfill_resubmit_after_s:g} s) must exceed "
                f"MMOS_WORKER_TASK_TIME_LIMIT_S ({self.worker_task_time_limit_s} s), or a batch still running is "
                "sent again; raise the first or lower the second"
            )
            raise ValueError(msg)
        return self

    @property
    def jar_cache_dir(self) -> Path:
        """Jars fetched from Maven Central: shared by every clone on the machine."""
        return self.cache_dir / "opensearch-2.19.1"

    def redacted(self) -> dict[str, object]:
        """The settings as a dict that is safe to print (secrets masked)."""
        out: dict[str, object] = {}
        for name, value in self:
            if isinstance(value, SecretStr):
                out[name] = "**********" if value.get_secret_value() else ""
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once from the environment."""
    return Settings()
