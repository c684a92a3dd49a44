"""Strict validation of the chart's custom resources (KEDA ScaledObject, Prometheus Operator
ServiceMonitor) against their CRDs' schemas, vendored under crd_schemas/ (see generate.py there
for where they come from). kubernetes-validate knows only built-in kinds."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import jsonschema

SCHEMAS = Path(__file__).resolve().parent / "crd_schemas"
VENDORED = {("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
            ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json"}


@cache
def _validator(file_name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / file_name).read_text())
    return jsonschema.Draft202012Validator(schema)


def crd_errors(obj: dict) -> list[str]:
    """Every way `obj` breaks its CRD's schema (empty when valid); KeyError if not vendored."""
    validator = _validator(VENDORED[(obj["apiVersion"], obj["kind"])])
    return [f"{obj['kind']}/{obj['metadata'].get('name')}: {'/'.join(map(str, e.absolute_path))}: "
            f"{e.message}" for e in validator.iter_errors(obj)]
