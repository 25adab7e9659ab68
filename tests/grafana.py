"""The metric names packaging/grafana/higgs.json queries, and the names a scrape exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[1] / "packaging" / "grafana" / "higgs.json"
_NAME = re.compile(r"\bhiggs_[a-z0-9_]+")


def grafana_names(prefix: str = "higgs_") -> set[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    return {n for e in exprs for n in _NAME.findall(e) if n.startswith(prefix)}


def exported_names(text: str) -> set[str]:
    """Sample names (``…_total``, ``…_bucket``) as PromQL sees them."""
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}
