"""The table and the chart."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def table(r: dict[str, Any]) -> str:
    rows = [
        ("bare aiokafka loop", f"{r['bare_msgs_per_s']:,.0f} msg/s", "1.00"),
        (
            "worker, cached path",
            f"{r['cached_msgs_per_s']:,.0f} msg/s",
            f"{r['cached_ratio']:.2f} of bare (target >= 0.9); rounds "
            + " / ".join(f"{v:,}" for v in r.get("cached_rounds", [])),
        ),
        (
            "Quix Streams 3.28, stateless / stateful",
            f"{r.get('quix_stateless_msgs_per_s', 0):,.0f} / "
            f"{r.get('quix_stateful_msgs_per_s', 0):,.0f} msg/s",
            f"stateful {r.get('quix_stateful_to_bare', 0):.2f} of bare; the worker's cached "
            f"path is {r.get('quix_ratio', 0):.2f} of it (target >= 1 every round); stateful "
            "rounds " + " / ".join(f"{v:,}" for v in r.get("quix_stateful_rounds", [])),
        ),
        (
            "worker, slow API (200 ms)",
            f"{r['slow_msgs_per_s']:,.0f} msg/s",
            f"{r['slow_ratio']:.2f} of cached (target >= 0.5)",
        ),
        (
            "worker, chatty new sessions (API 200 ms)",
            f"{r.get('chatty_msgs_per_s', 0):,.0f} msg/s",
            f"{r.get('chatty_ratio', 0):.2f} of cached (target >= 0.5); rounds "
            + " / ".join(f"{v:,}" for v in r.get("chatty_rounds", []))
            + f"; calls {' / '.join(map(str, r.get('chatty_calls', [])))} of "
            f"{r.get('chatty_ideal_calls', 0)}, {r.get('chatty_duplicate_calls', 0)} duplicates "
            f"(target 0), {r.get('chatty_blocked', 0)} blocked",
        ),
        (
            "signed audit chain, cached path",
            f"{r.get('audit_cached_ratio', 0):.3f} of unsigned",
            "median of back-to-back pairs (target >= 0.95); cached allows are not audited",
        ),
        (
            "signed audit chain, slow API (1 call per 50)",
            f"{r.get('audit_slow_ratio', 0):.3f} of unsigned",
            f"median of back-to-back pairs (target >= 0.95); "
            f"{r.get('audit_seal_us', 0):.1f} µs of CPU per signed event",
        ),
        (
            "CPU per HTTP call (200 at once)",
            f"{r['call_cpu_worker_ms']:.2f} ms",
            f"{r['call_cpu_ratio']:.2f} of httpx's own transport ({r['call_cpu_httpx_ms']:.2f} ms)",
        ),
        (
            "calls / ideal / duplicates",
            f"{r['calls']} / {r['ideal_calls']}",
            f"{r['duplicate_calls']} duplicates (target 0), {r.get('blocked', 0)} blocked "
            "(slow API run)",
        ),
        (
            "latency at 2,000 msg/s",
            f"p50 {r['p50_ms']:.1f} ms",
            f"p99 {r['p99_ms']:.1f} ms (target < 20)",
        ),
        (
            "same load, send to the worker's decision",
            f"p50 {r.get('decided_p50_ms', 0):.1f} ms",
            f"p99 {r.get('decided_p99_ms', 0):.1f} ms (the inbound hop and the worker)",
        ),
        (
            "same load, the worker's own decision time",
            f"p50 {r.get('own_p50_ms', 0):.1f} ms",
            f"p99 {r.get('own_p99_ms', 0):.1f} ms (target < 20), all within "
            f"{r.get('own_max_ms', 0):g} ms: arrival to hand-over to the Kafka client "
            "(secure_session_decision_handover_seconds); p99 by 2 s: "
            + " / ".join(f"{v:.1f}" for v in r.get("own_p99_by_2s_ms", [])),
        ),
        (
            "same load, in the worker: arrival to delivery",
            f"p50 {r.get('delivery_p50_ms', 0):.1f} ms",
            f"p99 {r.get('delivery_p99_ms', 0):.1f} ms, all within "
            f"{r.get('delivery_max_ms', 0):g} ms: the broker's answer to the produce request "
            "included (secure_session_decision_seconds); p99 by 2 s: "
            + " / ".join(f"{v:.1f}" for v in r.get("delivery_p99_by_2s_ms", [])),
        ),
        (
            "same load, the worker's event loop",
            f"{r.get('loop_late_10ms', 0):.0f} of {r.get('loop_ticks', 0):.0f} ticks",
            f"late by > 10 ms (a tick every 50 ms); none by more than "
            f"{r.get('loop_lag_max_ms', 0):.0f} ms",
        ),
        (
            "same load, producer to consumer, no worker",
            f"p50 {r.get('hop_p50_ms', 0):.1f} ms",
            f"p99 {r.get('hop_p99_ms', 0):.1f} ms (the broker and load generator's share)",
        ),
        (
            f"latency at half of peak ({r['half_peak_rate']:,.0f} msg/s)",
            f"p50 {r['half_peak_p50_ms']:.1f} ms",
            f"p99 {r['half_peak_p99_ms']:.1f} ms",
        ),
    ]
    if "scale_1_workers_msgs_per_s" in r:
        rows.append(
            (
                "scale-out, cached path, 1 / 2 / 3 workers",
                " / ".join(f"{r[f'scale_{n}_workers_msgs_per_s']:,.0f}" for n in (1, 2, 3))
                + " msg/s",
                "one group, on a backlog; cores used by the workers "
                + " / ".join(f"{r.get(f'scale_{n}_workers_cores', 0):.2f}" for n in (1, 2, 3))
                + ", by the broker "
                + " / ".join(f"{r.get(f'scale_{n}_broker_cores', 0):.2f}" for n in (1, 2, 3))
                + f" (of {os.cpu_count()})",
            )
        )
    if "rss_bytes_per_session" in r:
        rows += [
            (
                f"RSS per session at {r['state_sessions']:,}",
                f"{r['rss_bytes_per_session']:,.0f} B",
                f"{r['rss_full_mb']:,.0f} MB in all",
            ),
            (
                "ready with them: first start / restart, memory store (the default)",
                f"{r['first_ready_s']:.1f} / {r['restart_ready_s']:.1f} s",
                "start to a first message's decision (target < 10 s); it loads its partitions "
                "with a plain consumer, which reads the changelog alone in "
                f"{r.get('changelog_read_s', 0):.1f} s",
            ),
            (
                "ready with them: first start / restart, RocksDB store",
                f"{r['first_ready_rocksdb_s']:.1f} / {r['restart_ready_rocksdb_s']:.1f} s",
                "a first start goes through Faust's recovery; a restart reads local state",
            ),
        ]
    width = max(len(a) for a, _, _ in rows)
    lines = [f"| {'run':<{width}} | figure | comparison |", f"|{'-' * (width + 2)}|---|---|"]
    lines += [f"| {a:<{width}} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def chart(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = [n for n in (1, 2, 3) if f"scale_{n}_workers_msgs_per_s" in r]
    fig, axes = plt.subplots(1, 3 if scale else 2, figsize=(15 if scale else 10, 4))
    left, right = axes[0], axes[1]
    names = ["bare loop", "cached path", "slow API"]
    values = [r["bare_msgs_per_s"], r["cached_msgs_per_s"], r["slow_msgs_per_s"]]
    left.bar(names, values, color=["#999999", "#2a7ab0", "#e08a1e"])
    left.set_ylabel("messages / s")
    left.set_title("Throughput (same run)")
    labels = ["2,000 msg/s", f"{r['half_peak_rate']:,.0f} msg/s"]
    x = range(len(labels))
    right.bar([i - 0.2 for i in x], [r["p50_ms"], r["half_peak_p50_ms"]], 0.4, label="p50")
    right.bar([i + 0.2 for i in x], [r["p99_ms"], r["half_peak_p99_ms"]], 0.4, label="p99")
    right.axhline(20, color="red", linestyle="--", linewidth=1, label="p99 target")
    right.set_xticks(list(x), labels)
    right.set_ylabel("added latency, ms")
    right.set_title("Latency, cached path")
    right.legend()
    if scale:
        ax = axes[2]
        ax.bar(
            [f"{n} worker{'s' if n > 1 else ''}" for n in scale],
            [r[f"scale_{n}_workers_msgs_per_s"] for n in scale],
            color="#2a7ab0",
        )
        for i, n in enumerate(scale):
            cores = r.get(f"scale_{n}_workers_cores", 0) + r.get(f"scale_{n}_broker_cores", 0)
            ax.annotate(
                f"{cores:.1f} cores",
                (i, r[f"scale_{n}_workers_msgs_per_s"]),
                ha="center",
                va="bottom",
            )
        ax.set_ylabel("messages / s")
        ax.set_title(f"Scale-out, cached path ({os.cpu_count()} cores: workers + broker)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
