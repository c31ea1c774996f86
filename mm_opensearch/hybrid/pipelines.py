"""Search pipelines for server-side fusion, named by their parameters and created once.

A pipeline's name encodes everything it does (``mmos-rrf-k60``, ``mmos-linear-min_max-w0.3-0.7``),
so two processes that want the same fusion share one pipeline and nothing ever has to update one
in place. Only provisioning (``index create|augment|provision``, a user with ``mmos_admin``'s
pipeline permissions) uses the registry; the searcher never creates a pipeline, it names the one
provisioning made for its fusion. A fusion the cluster refuses (``z_score`` or weighted RRF on 2.19),
or a pipeline this user may not create, is remembered as refused and recorded in the index ``_meta``.
"""

from __future__ import annotations

import threading
from typing import Any

from opensearchpy import AuthorizationException, NotFoundError, OpenSearch, RequestError

from mm_opensearch.hybrid.fusion import FusionOptions

__all__ = ["pipeline_name", "pipeline_body", "PipelineRegistry"]


def _server_weights(options: FusionOptions) -> list[float]:
    """Weights summing to 1, as the plugin requires (the weighted mean does not change)."""
    total = sum(options.weights)
    return [round(w / total, 4) for w in options.weights]


def pipeline_name(options: FusionOptions) -> str:
    """A name that identifies the pipeline's parameters."""
    if options.method == "rrf":
        weights = "" if all(w == 1.0 for w in options.weights) else "-w" + "-".join(f"{w:g}" for w in options.weights)
        return f"mmos-rrf-k{options.rank_constant}{weights}"
    weights = "-".join(f"{w:g}" for w in _server_weights(options))
    return f"mmos-linear-{options.normalization}-w{weights}"


def pipeline_body(options: FusionOptions) -> dict[str, Any]:
    """The search pipeline definition that fuses a ``hybrid`` query as ``options`` say."""
    if options.method == "rrf":
        combination: dict[str, Any] = {"technique": "rrf", "rank_constant": options.rank_constant}
        if not all(w == 1.0 for w in options.weights):
            combination["parameters"] = {"weights": list(options.weights)}
        processor = {"score-ranker-processor": {"combination": combination}}
    else:
        processor = {
            "normalization-processor": {
                "normalization": {"technique": options.normalization},
                "combination": {"technique": "arithmetic_mean", "parameters": {"weights": _server_weights(options)}},
            }
        }
    return {
        "description": f"mm-opensearch hybrid fusion ({pipeline_name(options)})",
        "phase_results_processors": [processor],
    }


_NO_RIGHTS = (
    "this user may not read or create search pipeline {name} (403); create it with `mm-opensearch index provision` "
    "as a user that may"
)


class PipelineRegistry:
    """Creates or reuses pipelines on one cluster; remembers which exist and which were refused."""

    def __init__(self, client: OpenSearch) -> None:
        self._client = client
        self._ready: set[str] = set()
        self._refused: dict[str, str] = {}
        self._lock = threading.Lock()

    def refusal(self, options: FusionOptions) -> str | None:
        """Why the cluster refused these options' pipeline, if it did."""
        return self._refused.get(pipeline_name(options))

    def forget(self, name: str) -> None:
        """Forget that pipeline ``name`` exists (it was deleted): the next :meth:`ensure` checks again."""
        with self._lock:
            self._ready.discard(name)

    def ensure(self, options: FusionOptions, *, request_timeout: float | None = None) -> str | None:
        """The pipeline's name, created if missing; None when the cluster cannot run this fusion.

        ``request_timeout`` bounds each call (a serving search passes what is left of its deadline).
        """
        name = pipeline_name(options)
        params = None if request_timeout is None else {"request_timeout": request_timeout}
        with self._lock:
            if name in self._ready:
                return name
            if name in self._refused:
                return None
            try:
                self._client.transport.perform_request("GET", f"/_search/pipeline/{name}", params=params)
            except NotFoundError:
                try:
                    self._client.transport.perform_request(
                        "PUT", f"/_search/pipeline/{name}", params=params, body=pipeline_body(options)
                    )
                except AuthorizationException:
                    self._refused[name] = _NO_RIGHTS.format(name=name)
                    return None
                except RequestError as e:
                    self._refused[name] = str(e.info.get("error", {}).get("reason", e) if isinstance(e.info, dict) else e)
                    return None
            except AuthorizationException:
                self._refused[name] = _NO_RIGHTS.format(name=name)
                return None
            self._ready.add(name)
            return name
