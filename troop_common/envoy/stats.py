"""Envoy's own statistics, re-exported on its component's `/metrics`.

    export_envoy_stats(metrics, envoy)   # the coordinator's REST face, the sidecar's OpenAI face

Envoy's admin interface listens on a Unix socket (nothing else can reach it), so each
scrape of the component's endpoint reads `/stats/prometheus` from that socket and appends
it to the component's own exposition, unchanged: Envoy's names (all `envoy_`), types and
labels, as Envoy's own dashboards expect. The text is checked before it is appended (it
parses, and every family is `envoy_`), so the whole scrape stays valid; an Envoy that is
stopped, dead or slow contributes nothing, and `troop_envoy_up` says so (0).
"""

from __future__ import annotations

import http.client
import logging

from prometheus_client.parser import text_string_to_metric_families

from troop_common.envoy.admin import TIMEOUT_S, admin_get
from troop_common.envoy.process import EnvoySidecar
from troop_common.metrics import Metrics

log = logging.getLogger("troop.envoy.stats")
PREFIX = "envoy_"


def checked(text: bytes) -> bytes:
    """`text` if it is a Prometheus exposition of `envoy_` families only, ending in a
    newline; ValueError otherwise (appended, anything else could break the scrape)."""
    decoded = text.decode("utf-8")
    for family in text_string_to_metric_families(decoded):
        if not family.name.startswith(PREFIX):
            raise ValueError(f"not an Envoy statistic: {family.name!r}")
    return text if not text or text.endswith(b"\n") else text + b"\n"


class EnvoyStats:
    """Reads a running `EnvoySidecar`'s statistics at each scrape; `up` is whether the
    last read succeeded."""

    def __init__(self, envoy: EnvoySidecar, timeout_s: float = TIMEOUT_S) -> None:
        self._envoy = envoy
        self._timeout_s = timeout_s
        self.up = False

    def exposition(self) -> bytes:
        """Envoy's `/stats/prometheus`, checked; empty when it cannot be read."""
        admin = self._envoy.admin_path
        try:
            if admin is None:
                raise OSError("envoy is not running")
            text = checked(admin_get(admin, "/stats/prometheus", self._timeout_s))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if self.up:
                log.warning("cannot read Envoy's statistics: %s", exc)
            self.up = False
            return b""
        self.up = True
        return text


def export_envoy_stats(metrics: Metrics, envoy: EnvoySidecar) -> EnvoyStats:
    """Append `envoy`'s statistics to each scrape of `metrics`, with `troop_envoy_up`."""
    stats = EnvoyStats(envoy)
    metrics.include(stats.exposition)
    metrics.gauge_of(
        "troop_envoy_up",
        "1 when this scrape read the embedded Envoy's statistics (appended as envoy_*), else 0",
        lambda: float(stats.up),
    )
    return stats


__all__ = ["EnvoyStats", "checked", "export_envoy_stats"]
