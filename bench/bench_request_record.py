"""What recording one Generate call costs the runtime's event loop (CPU; no model, no server).

The server records each call once per output batch (a timestamp until the first token) and once
at its end (log line, metrics, spans). This times that work for a 128-token request delivered
in 128 batches, with metrics off and on (logging silenced: its cost is the handler's, and the
same either way), as microseconds per request; the lowest of --repeats runs.

    python3 bench/bench_request_record.py [--requests 20000] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime_service.engine.request import FinishReason, Request  # noqa: E402
from runtime_service.server.metrics import RuntimeMetrics  # noqa: E402
from runtime_service.server.request_log import RequestObserver, ServedModel  # noqa: E402

OUTPUT_TOKENS = 128


def us_per_request(metrics: bool, requests: int) -> float:
    observer = RequestObserver(RuntimeMetrics() if metrics else None,
                               served_model=lambda: ServedModel("k" * 64, "bench"))
    assembler = SimpleNamespace(request_id="r", num_prompt_tokens=128,
                                num_output_tokens=OUTPUT_TOKENS, cached_tokens=0,
                                finish_reason=FinishReason.LENGTH)
    batch = [SimpleNamespace(new_token_ids=(1,))]
    start = time.perf_counter()
    for _ in range(requests):
        record = observer.start(None)
        request = Request("r", [1], arrival_time=record.started_s)
        request.first_scheduled_time = record.started_s
        for _ in range(OUTPUT_TOKENS):
            record.outputs(batch)
        record.finish("OK", assembler, request)
    return (time.perf_counter() - start) / requests * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.getLogger("kiln.runtime.requests").setLevel(logging.WARNING)
    report = {}
    for metrics in (False, True):
        runs = [us_per_request(metrics, args.requests) for _ in range(args.repeats)]
        report[f"metrics_{'on' if metrics else 'off'}_us_per_request"] = min(runs)
    report["metrics_added_us_per_request"] = (report["metrics_on_us_per_request"] -
                                              report["metrics_off_us_per_request"])
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
