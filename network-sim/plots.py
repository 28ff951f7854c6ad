"""PNG plots: utilization over the day and the inference latency distribution."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .metrics import RunResult  # noqa: E402

QUANTILES = np.linspace(0, 1, 2001)


def plot_utilization(
    results: list[RunResult], path: Path, start_hour: float = 0.0
) -> Path:
    """Draw each run's utilization per time bin against the hour of the day."""
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for result in results:
        bins = len(result.utilization_timeline)
        hours = start_hour + (np.arange(bins) + 0.5) * result.bin_minutes / 60
        axes.plot(
            hours, np.array(result.utilization_timeline) * 100, label=result.label
        )
    axes.set_xlabel("hour of the day")
    axes.set_ylabel("utilization of active units (%)")
    axes.set_title(f"{results[0].scenario}: utilization over the day")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_latency(results: list[RunResult], path: Path) -> Path:
    """Draw the cumulative distribution of inference response times per run."""
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for result in results:
        if len(result.latencies_ms) == 0:
            continue
        values = np.quantile(result.latencies_ms, QUANTILES)
        axes.plot(np.maximum(values, 0.01), QUANTILES * 100, label=result.label)
    for limit in (50, 100):
        axes.axvline(limit, color="grey", linestyle="--", linewidth=1)
    axes.set_xscale("log")
    axes.set_xlabel("inference response time (ms, log scale)")
    axes.set_ylabel("requests completed within (%)")
    axes.set_title(f"{results[0].scenario}: inference latency distribution")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_plots(
    results: list[RunResult], folder: Path, start_hour: float = 0.0
) -> list[Path]:
    """Write utilization.png and latency.png into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        plot_utilization(results, folder / "utilization.png", start_hour),
        plot_latency(results, folder / "latency.png"),
    ]
