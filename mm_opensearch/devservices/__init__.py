"""Local development services: a real single-node OpenSearch (one JVM, jars from Maven Central)
and a real Redis, started on 127.0.0.1 with their data under ``Settings.dev_dir``."""

from mm_opensearch.devservices.opensearch import OpenSearchNode
from mm_opensearch.devservices.process import ServiceStatus
from mm_opensearch.devservices.redis import RedisServer

__all__ = ["OpenSearchNode", "RedisServer", "ServiceStatus"]
