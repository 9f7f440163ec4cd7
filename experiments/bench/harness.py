"""Measure one case: a scheme, a strategy, a bench model and a number of spawned workers.

For each update the trainer stamps the next version into its model (its "optimizer step"), then:

* **blocking** mode: ``t0``, ``send()``; the trainer stall is the time ``send`` blocks;
* **async** mode: ``t0``, ``send_async()``, a real forward/backward of the model on a batch of
  ``fb_batch`` inputs (it only reads the parameters), ``wait_async()``; the stall is the time
  spent in ``send_async`` plus ``wait_async``, the forward/backward excluded; the time in
  ``send_async`` alone is recorded too (what a trainer that overlaps more work waits at most).

In both modes the freshness latency is ``max over workers(t_verified) - t0``, where each worker
takes ``t_verified`` after it has applied the update and read the version back from its own
parameters. The trainer waits for every worker before the next update, so updates never
coalesce. Times are ``time.perf_counter_ns`` (CLOCK_MONOTONIC, the same clock in every process).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import nn

from experiments.bench import worker as W
from experiments.bench.config import BenchConfig
from experiments.bench.limits import gloo_broadcast_ms
from experiments.bench.memory import memcpy_floor_ms, rss_mb
from experiments.bench.models import build_model, checksum, input_size, stamp
from experiments.common.stats import model_bytes, percentile
from weightsync import WeightSyncScheme

SchemeFactory = Callable[[], WeightSyncScheme]


def summarize(values_ms: list[float]) -> dict[str, float] | None:
    """Median and p95 of a list of milliseconds (``experiments.common.stats.percentile``, as in
    a training run's summary); None when empty."""
    if not values_ms:
        return None
    return {
        "median": percentile(values_ms, 50),
        "p95": percentile(values_ms, 95),
        "n": len(values_ms),
    }


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def shared_bytes(scheme: WeightSyncScheme) -> int:
    """Bytes of shared memory the scheme's trainer-side transport holds (buffers it created)."""
    transport = getattr(scheme, "_transport", None)
    total = 0
    for ring in getattr(transport, "rings", {}).values():
        total += sum(b.data.numel() * b.data.element_size() for b in ring.buffers)
    staging = getattr(transport, "staging", None)
    if staging is not None and staging.data.is_shared():
        total += staging.data.numel() * staging.data.element_size()
    return total


class _Case:
    """A trainer, its spawned workers and the shared report tensors of one measured case."""

    def __init__(
        self, make_scheme: SchemeFactory, model_name: str, num_workers: int, cfg: BenchConfig
    ):
        self.cfg, self.num_workers = cfg, num_workers
        self.scheme = make_scheme()
        self.backend = type(self.scheme).backend_name
        self.send_async_ms = 0.0  # of the last async update
        if self.backend == "distributed":  # its workers must know the store's port when spawned
            self.scheme.num_workers, self.scheme.port = num_workers, free_port()
        self.strategy = self.scheme.strategy.extract_as
        self.report = torch.zeros((num_workers, W.REPORT_COLUMNS), dtype=torch.int64)
        self.report.share_memory_()
        self.control = torch.zeros(2, dtype=torch.int64).share_memory_()
        self.threads = cfg.worker_threads or max(1, (os.cpu_count() or 1) // num_workers)
        ctx = mp.get_context("spawn")
        self.pipes = [ctx.Pipe() for _ in range(num_workers)]
        self.procs = [
            ctx.Process(
                target=W.run_worker,
                args=(
                    self.scheme,
                    worker_end,
                    model_name,
                    w,
                    self.report,
                    self.control,
                    self.threads,
                    cfg.poll_timeout_s,
                ),
                daemon=True,
            )
            for w, (_, worker_end) in enumerate(self.pipes)
        ]
        self.model = build_model(model_name, seed=0)
        self.sender = None

    # ------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        for proc in self.procs:
            proc.start()
        self.wait_for(lambda: bool((self.report[:, W.PHASE] >= W.BUILT).all()), "build its model")
        self.rss_base = [rss_mb(p.pid) for p in self.procs]
        stamp(self.model, 1)  # connect() sends version 1; a worker may see it in its loop
        self.scheme.init_on_sender(
            "policy", model=self.model, pipes=[trainer_end for trainer_end, _ in self.pipes]
        )
        self.scheme.connect()
        self.sender = self.scheme.get_sender()
        self.wait_for(lambda: bool((self.report[:, W.PHASE] >= W.CONNECTED).all()), "connect")

    def stop(self) -> None:
        self.control[W.STOP] = 1
        try:
            self.scheme.shutdown()
        finally:
            reap(self.procs, join_timeout=10)
            for a, b in self.pipes:
                a.close()
                b.close()

    def wait_for(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.cfg.timeout_s
        while not done():
            failed = [w for w, p in enumerate(self.procs) if not p.is_alive()]
            failed += (self.report[:, W.PHASE] == W.FAILED).nonzero().flatten().tolist()
            if failed:
                raise RuntimeError(f"bench worker(s) {sorted(set(failed))} died before they {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"bench workers did not {what} within {self.cfg.timeout_s} s")
            time.sleep(0.0002)

    # -------------------------------------------------------------------------------- updates
    def update(self, mode: str, fb: Callable[[], None] | None = None) -> tuple[float, float | None]:
        """One update; returns (trainer stall ms, freshness ms or None when nothing moves)."""
        version = self.sender.version + 1
        stamp(self.model, version)
        t0 = time.perf_counter_ns()
        if mode == "blocking":
            self.scheme.send()
            stall = time.perf_counter_ns() - t0
        else:
            self.scheme.send_async()
            t1 = time.perf_counter_ns()
            self.send_async_ms = (t1 - t0) / 1e6
            fb()
            t2 = time.perf_counter_ns()
            self.scheme.wait_async()
            stall = (t1 - t0) + (time.perf_counter_ns() - t2)
        if self.backend == "none":
            return stall / 1e6, None
        self.wait_for(
            lambda: bool((self.report[:, W.VERSION] >= version).all()), f"verify version {version}"
        )
        latest = int(self.report[:, W.T_NS].max())
        return stall / 1e6, (latest - t0) / 1e6

    def probe(self) -> tuple[list[dict[str, float]], bool | None]:
        """Ask every worker for a checksum of its weights; read their memory after it."""
        request = int(self.control[W.PROBE_REQUEST]) + 1
        self.control[W.PROBE_REQUEST] = request
        self.wait_for(lambda: bool((self.report[:, W.PROBE] >= request).all()), "checksum")
        rss = [rss_mb(p.pid) for p in self.procs]
        if self.backend == "none":
            return rss, None
        want = checksum(self.model)
        return rss, bool((self.report[:, W.CHECKSUM] == want).all())


def _forward_backward(model: nn.Module, batch: int) -> Callable[[], None]:
    x = torch.randn(batch, input_size(model))

    def fb() -> None:
        model(x).sum().backward()

    return fb


def _delta(after: list[dict[str, float]], before: list[dict[str, float]], key: str) -> list[float]:
    return [round(a.get(key, 0.0) - b.get(key, 0.0), 1) for a, b in zip(after, before, strict=True)]


def measure_case(
    make_scheme: SchemeFactory,
    model_name: str,
    num_workers: int,
    cfg: BenchConfig,
    floor_ms: float | None = None,
) -> dict[str, Any]:
    """Run one case with a fresh scheme from ``make_scheme`` and return its figures (see the
    module docstring for what is timed)."""
    case = _Case(make_scheme, model_name, num_workers, cfg)
    nbytes = model_bytes(case.model)
    if floor_ms is None:
        floor_ms = memcpy_floor_ms(nbytes, cfg.floor_repeats)
    fb = _forward_backward(case.model, cfg.fb_batch)
    result: dict[str, Any] = {
        "scheme": case.backend,
        "strategy": case.strategy,
        "model": model_name,
        "params": sum(p.numel() for p in case.model.parameters()),
        "tensors": len(list(case.model.parameters())),
        "bytes": nbytes,
        "workers": num_workers,
        "worker_threads": case.threads,
        "floor_ms": floor_ms,
    }
    try:
        case.start()
        case.probe()  # a first checksum settles each worker's allocator before memory is compared
        for mode in ("blocking", "async"):
            for _ in range(cfg.warmup):
                case.update(mode, fb)
            stalls, fresh, fbs, calls = [], [], [], []
            for _ in range(cfg.updates):
                stall, latency = case.update(mode, fb)
                stalls.append(stall)
                if mode == "async":
                    calls.append(case.send_async_ms)
                if latency is not None:
                    fresh.append(latency)
            if mode == "async":
                for _ in range(min(5, cfg.updates)):
                    t = time.perf_counter_ns()
                    fb()
                    fbs.append((time.perf_counter_ns() - t) / 1e6)
            result[mode] = {
                "stall_ms": summarize(stalls),
                "fresh_ms": summarize(fresh),
                **({"fb_ms": summarize(fbs), "send_async_ms": summarize(calls)} if fbs else {}),
            }
        rss_timed, checksum_ok = case.probe()
        memory: dict[str, Any] = {
            "worker_base_mb": [round(r["total"], 1) for r in case.rss_base],
            "worker_extra_anon_mb": _delta(rss_timed, case.rss_base, "anon"),
            "worker_extra_shmem_mb": _delta(rss_timed, case.rss_base, "shmem"),
            "shared_mb": round(shared_bytes(case.scheme) / 2**20, 1),
        }
        if cfg.flatness_updates and nbytes <= cfg.flatness_max_mb * 2**20:
            for _ in range(cfg.flatness_updates):
                case.update("blocking")
            rss_flat, checksum_ok_flat = case.probe()
            checksum_ok = checksum_ok and checksum_ok_flat if checksum_ok is not None else None
            memory["flat_updates"] = cfg.flatness_updates
            memory["flat_growth_mb"] = _delta(rss_flat, rss_timed, "total")
            memory["flat_growth_anon_mb"] = _delta(rss_flat, rss_timed, "anon")
            memory["flat_growth_shmem_mb"] = _delta(rss_flat, rss_timed, "shmem")
            memory["shared_mb_after"] = round(shared_bytes(case.scheme) / 2**20, 1)
        result["memory"] = memory
        result["checksum_ok"] = checksum_ok
        result["torn_reads"] = int(case.report[:, W.BAD].sum())
        result["verified_version"] = int(case.report[:, W.VERSION].min())
    finally:
        case.stop()
    fresh = (result.get("blocking") or {}).get("fresh_ms")
    if fresh:
        result["gb_per_s"] = nbytes / (fresh["median"] / 1e3) / 1e9
        result["x_floor"] = fresh["median"] / floor_ms
        if case.backend == "distributed":  # the medium's own limit, measured now
            result["gloo_ms"] = gloo_broadcast_ms(nbytes, num_workers, cfg.floor_repeats)
            result["x_gloo"] = fresh["median"] / result["gloo_ms"]
    return result


def reap(procs: list[Any], join_timeout: float) -> None:
    """Wait up to ``join_timeout`` s for each started process to exit; kill those that do not."""
    for proc in procs:
        if proc.pid is None:  # never started
            continue
        proc.join(timeout=join_timeout)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
