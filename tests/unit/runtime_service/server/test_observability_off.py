"""With metrics and tracing off (the default), a runtime pod needs neither prometheus-client nor
OpenTelemetry: the GPU machine has neither, and the embedded pod never asks for them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]

WITHOUT_THEM = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("prometheus_client", "opentelemetry"):
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Refuse())
from runtime_service.server.serve import RuntimeServer, settings_from_args, add_serve_arguments
from runtime_service.server.observability import ObservabilitySettings, PodObservability
import argparse
parser = argparse.ArgumentParser()
add_serve_arguments(parser)
args = parser.parse_args([])
assert args.metrics_listen == "" and args.otlp_endpoint == "" and args.log_format == "text"
off = PodObservability(ObservabilitySettings(), host=None)
assert off.metrics is None and not off.tracing.enabled and off.start() == 0
record = off.observer.start([("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")])
record.finish("OK", None, None)
off.stop()
print("ok")
"""


def test_a_pod_without_metrics_or_tracing_imports_neither_library():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", WITHOUT_THEM], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
