"""How long a broker call waits while bad (and big) files are saved into the rules directory.

Issue 9 point 6: while any file loads, the server must keep answering, no call waiting more than
250 ms longer than usual, and memory must stay small (goal: peak under 500 MB). This starts a real
`hookrules serve` on loopback, keeps two clients calling it (EMQX ExHook over gRPC, VerneMQ webhooks
over HTTP, one keep-alive connection each), measures the usual latency for a few seconds, then saves
every kind of file in tests/bad_files.CATALOGUE in turn and prints, per kind and overall:

    worst extra wait = worst latency of a call in flight while the kind was loading - usual (median)

and the server's peak resident memory (VmHWM). Wrong answers and failed calls are counted too.

    .venv/bin/python bench/load_stall.py [--kinds a,b,...] [--baseline 5] [--settle 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.bad_files import CATALOGUE  # noqa: E402
from tests.stall_harness import (calls_in, grpc_caller, http_caller, outside_dir, peak_rss_mb, rss_mb,  # noqa: E402
                                 save_each, write_rules)
from tests.support import ServerProcess, generate_stubs  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="", help="comma-separated kinds (default: all): " + ", ".join(CATALOGUE))
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds of calls before any save")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds of calls kept after each load")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k] or list(CATALOGUE)
    with tempfile.TemporaryDirectory(prefix="hookrules-stall-") as tmp:
        base = Path(tmp)
        stubs = generate_stubs(base / "stubs")["v3"]
        rules = write_rules(base / "rules")
        outside = outside_dir(base)
        server = ServerProcess(rules, "--log-level", "info", log_path=base / "server.log")
        callers = [grpc_caller(server, stubs), http_caller(server)]
        try:
            rss_start = rss_mb(server.proc.pid)
            for caller in callers:
                caller.start()
            time.sleep(args.baseline)
            baseline = [c.latency for caller in callers for c in caller.calls]
            usual = statistics.median(baseline)
            results = save_each(server, rules, outside, kinds, settle=args.settle)
            for caller in callers:
                caller.stop()
            peak = peak_rss_mb(server.proc.pid)
            alive = server.proc.poll() is None
        finally:
            for caller in callers:
                caller.stop()
            server.stop()
        rows = []
        for result in results:
            calls = calls_in(callers, result.window)
            worst = max((c.latency for c in calls), default=0.0)
            wrong = sum(1 for c in calls if c.answer != "allow")
            rows.append({"kind": result.kind, "calls": len(calls), "worst_ms": round(worst * 1000, 1),
                         "extra_ms": round((worst - usual) * 1000, 1), "wrong": wrong,
                         "handled": result.logged, "load_s": round(result.seconds, 2)})
        for row in rows:
            print(f"{row['kind']:28} calls {row['calls']:6}  worst {row['worst_ms']:8.1f} ms  "
                  f"extra {row['extra_ms']:8.1f} ms  wrong {row['wrong']:3}  "
                  f"{'handled' if row['handled'] else 'NOT HANDLED'} in {row['load_s']} s")
        summary = {
            "usual_ms": round(usual * 1000, 2),
            "baseline_p99_ms": round(sorted(baseline)[int(len(baseline) * 0.99)] * 1000, 2) if baseline else None,
            "worst_extra_ms": max((r["extra_ms"] for r in rows), default=0.0),
            "worst_kind": max(rows, key=lambda r: r["extra_ms"])["kind"] if rows else "",
            "wrong_answers": sum(r["wrong"] for r in rows),
            "failed_calls": sum(len(c.errors) for c in callers),
            "not_handled": [r["kind"] for r in rows if not r["handled"]],
            "rss_start_mb": round(rss_start, 1),
            "peak_rss_mb": round(peak, 1),
            "server_alive": alive,
        }
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
