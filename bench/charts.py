"""Charts of the benchmark results (PNG, matplotlib without a display).

``knee_chart``: end-to-end latency percentiles against the offered rate, with the
achieved rate. ``throughput_chart``: each measured target against its baseline, as
ratios. ``python bench/charts.py`` redraws the throughput chart from ``.bench/*.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / ".bench"


def knee_chart(steps: list[dict[str, Any]], path: Path, budget_ms: float = 100.0) -> None:
    """Latency p50/p99/p99.9 (log scale) and achieved rate against the offered rate."""
    offered = [step["offered"] for step in steps]
    figure, latency = plt.subplots(figsize=(8, 4.5), dpi=110)
    for key, label, style in (
        ("p50", "p50", "o-"),
        ("p99", "p99", "s-"),
        ("p999", "p99.9", "^-"),
    ):
        latency.plot(offered, [max(step[key], 0.1) for step in steps], style, label=label)
    latency.axhline(budget_ms, color="grey", linestyle="--", linewidth=1)
    latency.text(offered[0], budget_ms * 1.08, f"{budget_ms:.0f} ms", color="grey", fontsize=8)
    latency.set_yscale("log")
    latency.set_xlabel("offered rate (commands/s)")
    latency.set_ylabel("API accept → succeeded (ms)")
    latency.grid(True, which="both", alpha=0.3)
    achieved = latency.twinx()
    achieved.plot(
        offered, [step["achieved"] for step in steps], "k:", label="achieved rate", alpha=0.7
    )
    achieved.plot(offered, offered, color="lightgrey", linewidth=0.8)
    achieved.set_ylabel("achieved (commands/s)")
    lines = latency.get_legend_handles_labels()[0] + achieved.get_legend_handles_labels()[0]
    labels = latency.get_legend_handles_labels()[1] + achieved.get_legend_handles_labels()[1]
    latency.legend(lines, labels, loc="upper left", fontsize=8)
    latency.set_title("End to end: HTTP → Kafka → MQTT connector → Pico W → succeeded")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def throughput_chart(rows: list[tuple[str, float, float]], path: Path) -> None:
    """Horizontal bars: target / baseline for each (name, target, baseline), with the 1.0 line."""
    names = [name for name, _, _ in rows]
    ratios = [target / baseline if baseline else 0.0 for _, target, baseline in rows]
    figure, axes = plt.subplots(figsize=(8, 0.55 * len(rows) + 1.2), dpi=110)
    bars = axes.barh(names, ratios, color="#4c78a8")
    axes.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    for bar, ratio, (_, target, baseline) in zip(bars, ratios, rows, strict=True):
        axes.text(
            bar.get_width() + 0.02,
            bar.get_y() + bar.get_height() / 2,
            f"{ratio:.2f}×  ({target:,.0f} / {baseline:,.0f})",
            va="center",
            fontsize=8,
        )
    axes.invert_yaxis()
    axes.set_xlim(0, max([1.2, *ratios]) * 1.45)
    axes.set_xlabel("throughput / baseline (same run)")
    axes.set_title("Throughput against each baseline")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def load(name: str) -> dict[str, Any]:
    """One section's saved results (``.bench/{name}.json``), empty when it did not run."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save(name: str, results: dict[str, Any]) -> None:
    """Keep a section's results for the charts."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1))


def throughput_rows() -> list[tuple[str, float, float]]:
    """(name, target, baseline) of every section that ran."""
    rows: list[tuple[str, float, float]] = []
    api = load("api")
    if api:
        base = api["baseline"]["requests_per_second"]
        rows.append(("single POST, store on", api["api_store_on"]["requests_per_second"], base))
        rows.append(("single POST, store off", api["api_store_off"]["requests_per_second"], base))
        if "api_workers_2" in api:
            rows.append(
                (
                    "2 workers / 1 worker",
                    api["api_workers_2"]["requests_per_second"],
                    api["api_store_on"]["requests_per_second"],
                )
            )
        rows.append(("batch / raw producer", api["batch_commands_per_second"], api["raw_producer"]))
    tracker = load("tracker")
    for database in ("sqlite", "postgresql"):
        if database in tracker:
            rows.append((f"tracker {database} / 20k target", tracker[database], 20_000.0))
    mqtt = load("mqtt")
    if mqtt:
        rows.append(("MQTT connector / raw aiomqtt", mqtt["connector"], mqtt["raw"]))
    coap = load("coap")
    if coap:
        rows.append(("CoAP connector / raw aiocoap", coap["connector"], coap["raw"]))
    return rows


def main() -> None:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "bench-throughput.png"
    rows = throughput_rows()
    if rows:
        throughput_chart(rows, output)
        print(f"wrote {output}")


if __name__ == "__main__":
    main()
