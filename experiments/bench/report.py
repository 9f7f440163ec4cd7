"""Write the benchmark's results: ``results.json`` (everything) and ``results.md`` (a table)."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

COLUMNS = (
    "scheme",
    "strategy",
    "model",
    "MB",
    "workers",
    "memcpy floor ms",
    "send stall ms (med / p95)",
    "freshness ms (med / p95)",
    "GB/s",
    "x floor",
    "async stall ms (med / p95)",
    "send_async alone ms (med / p95)",
    "async freshness ms (med)",
    "fwd+bwd ms",
    "worker extra MB (anon / shm)",
    "shared MB",
    "RSS growth MB anon / shm (updates)",
    "verified in worker",
    "raw gloo broadcast ms",
    "x gloo",
)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "loadavg": os.getloadavg(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def _ms(value: float) -> str:
    return f"{value * 1e3:.1f} µs" if value < 0.1 else f"{value:.2f}"


def _pair(stats: dict[str, float] | None) -> str:
    return "n/a" if not stats else f"{_ms(stats['median'])} / {_ms(stats['p95'])}"


def _row(r: dict[str, Any]) -> list[str]:
    head = [r["scheme"], r["strategy"], r["model"], f"{r['bytes'] / 2**20:.0f}", str(r["workers"])]
    if "error" in r:
        return [*head, f"{r.get('floor_ms', 0):.2f}", f"**{r['error']}**", *[""] * 13]
    blocking, async_ = r["blocking"], r["async"]
    mem = r["memory"]
    anon = max(mem["worker_extra_anon_mb"], default=0.0)
    shm = max(mem["worker_extra_shmem_mb"], default=0.0)
    growth = "n/a"
    if "flat_growth_anon_mb" in mem:
        anon_growth = max(mem["flat_growth_anon_mb"], default=0.0)
        shm_growth = max(mem["flat_growth_shmem_mb"], default=0.0)
        growth = f"{anon_growth:+.1f} / {shm_growth:+.1f} ({mem['flat_updates']})"
    elif "flat_growth_mb" in mem:
        growth = f"{max(mem['flat_growth_mb'], default=0.0):+.1f} total ({mem['flat_updates']})"
    if r["checksum_ok"] is None:
        verified = "n/a (nothing sent)"
    else:
        ok = "checksum ok" if r["checksum_ok"] else "**CHECKSUM MISMATCH**"
        verified = f"v{r['verified_version']}, {ok}, {r['torn_reads']} torn"
    return [
        *head,
        f"{r['floor_ms']:.2f}",
        _pair(blocking["stall_ms"]),
        _pair(blocking["fresh_ms"]),
        f"{r['gb_per_s']:.2f}" if "gb_per_s" in r else "n/a",
        f"{r['x_floor']:.2f}" if "x_floor" in r else "n/a",
        _pair(async_["stall_ms"]),
        _pair(async_.get("send_async_ms")),
        _ms(async_["fresh_ms"]["median"]) if async_["fresh_ms"] else "n/a",
        _ms(async_["fb_ms"]["median"]),
        f"{anon:+.1f} / {shm:+.1f}",
        f"{mem['shared_mb']:.0f}",
        growth,
        verified,
        f"{r['gloo_ms']:.2f}" if "gloo_ms" in r else "n/a",
        f"{r['x_gloo']:.2f}" if "x_gloo" in r else "n/a",
    ]


def markdown(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    """The results as a markdown table, headed by the machine and the command."""
    load = ", ".join(f"{x:.2f}" for x in machine["loadavg"])
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GiB; "
        f"Python {machine['python']}, torch {machine['torch']}; load average at start: {load}.",
        "",
        f"Command: `{machine['command']}`",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in results]
    return "\n".join(lines) + "\n"


def write(
    out_dir: Path, results: list[dict[str, Any]], machine: dict[str, Any], config: Any
) -> str:
    """Write ``results.json`` and ``results.md`` into ``out_dir``; return the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(results, machine)
    payload = {"machine": machine, "config": config, "results": results}
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    (out_dir / "results.md").write_text(text)
    return text
