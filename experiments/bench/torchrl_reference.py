"""The reference for ``sync=distributed``: TorchRL 0.14.1's ``DistributedWeightSyncScheme``,
measured with the bench's definitions on the same models, so the two can be compared.

``python -m experiments.bench.torchrl_reference --models 1M,10M,100M --workers 1,2,4 --updates 10``
(in a venv with the ``[torchrl,experiments]`` extras; the only bench module that imports torchrl).

Each case spawns 1 trainer and N workers on this machine. They drive TorchRL's scheme without a
collector, the way its ``DistributedCollector`` does:

* trainer: ``init_on_sender(model_id="policy", num_workers=N, model=model)`` opens TorchRL's own
  ``TCPStore`` (on ``gethostbyname(gethostname())``, a free port); the scheme, pickled (it keeps
  only the store's address), is handed to the workers; ``connect()`` then calls
  ``init_process_group("gloo", rank=0, world_size=N + 1)`` (the *default* group, from
  ``MASTER_ADDR``/``MASTER_PORT``) and sends the initial weights to each worker point to point.
* worker ``w``: ``init_on_receiver(model_id="policy", context=<object with .policy = model>,
  worker_idx=w + 1)`` (the rank, 1-based), ``connect()``: joins the default group, receives the
  initial weights and starts TorchRL's receiving thread, which blocks on the store key
  ``NODE_<rank>_in``, receives every tensor into the model's own parameters, applies them and sets
  ``NODE_<rank>_out = "updated"``. The worker never calls ``receive()``.
* update: the trainer stamps the version into its model (:func:`models.stamp`, as the bench does)
  and calls ``send(weights=model)``: for each worker in turn it sets ``NODE_<rank>_in`` and sends
  every tensor (``TensorDict.send``, blocking), then waits for every worker's ack.

The figures are those of the bench's blocking mode (``harness.py``): the **stall** is the time
``send()`` blocks the trainer; the **freshness** is ``max over workers(t_verified) - t0``, ``t0``
taken just before ``send()``, ``t_verified`` taken by each worker once the update is applied and
the stamps read back from its own parameters all equal the version. TorchRL applies updates on
its own thread and offers no callback, so the worker reads its stamps in the scheme's
``_send_ack`` (wrapped): the step where TorchRL declares the update applied, just before the ack.
Times are ``time.perf_counter_ns`` in shared tensors; the trainer waits for every worker before the
next update. The scheme has no ``send_async``: there is no async mode. After the updates, a
checksum of each worker's whole model is compared with the trainer's, and (unless
``--gloo-repeats 0``) the raw gloo broadcast of the same bytes is measured as the medium's limit
(:func:`limits.gloo_broadcast_ms`). A case TorchRL's scheme cannot run is reported as
``did not run: <reason>``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchrl.weight_update import DistributedWeightSyncScheme

from experiments.bench import worker as W
from experiments.bench.config import BenchConfig
from experiments.bench.harness import free_port, reap, summarize
from experiments.bench.limits import gloo_broadcast_ms
from experiments.bench.models import build_model, checksum, read_stamps, stamp
from experiments.bench.report import machine_info
from experiments.common.stats import model_bytes

SCHEME = "torchrl-distributed"
FIRST_VERSION = 1  # stamped before connect(): the initial weights


class _Holder:
    """The receiver's ``context``: TorchRL resolves ``model_id="policy"`` to ``.policy``."""

    def __init__(self, policy: torch.nn.Module):
        self.policy = policy


def _wait(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.0002)


def _use_default_group(port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _record_verified_updates(scheme: Any, model: torch.nn.Module, row: torch.Tensor) -> None:
    """Wrap TorchRL's ack so the worker reads its stamps once an update is applied."""
    send_ack = scheme._send_ack

    def verify_then_ack(message: str = "updated") -> None:
        stamps = read_stamps(model)
        now = time.perf_counter_ns()
        if len(set(stamps)) == 1 and stamps[0] > int(row[W.VERSION]):
            row[W.T_NS] = now
            row[W.VERSION] = int(stamps[0])
        else:
            row[W.BAD] += 1
        send_ack(message)

    scheme._send_ack = verify_then_ack


def _worker(
    handoff: Any,
    worker_id: int,
    model_name: str,
    port: int,
    report: torch.Tensor,
    control: torch.Tensor,
    threads: int,
    timeout_s: float,
) -> None:
    row = report[worker_id]
    try:
        torch.set_num_threads(threads)
        _use_default_group(port)
        holder = _Holder(build_model(model_name, seed=1000 + worker_id).requires_grad_(False))
        row[W.PHASE] = W.BUILT
        scheme = pickle.loads(handoff.get(timeout=timeout_s))
        scheme.init_on_receiver(model_id="policy", context=holder, worker_idx=worker_id + 1)
        _record_verified_updates(scheme, holder.policy, row)
        scheme.connect()
        row[W.PHASE] = W.CONNECTED
        while not int(control[W.STOP]):
            probe = int(control[W.PROBE_REQUEST])
            if probe > int(row[W.PROBE]):
                row[W.CHECKSUM] = checksum(holder.policy)
                row[W.PROBE] = probe
            time.sleep(0.001)
        scheme.shutdown()
        row[W.PHASE] = W.DONE
    except BaseException:
        row[W.PHASE] = W.FAILED
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _trainer(
    handoff: Any,
    results: Any,
    model_name: str,
    num_workers: int,
    port: int,
    report: torch.Tensor,
    control: torch.Tensor,
    updates: int,
    warmup: int,
    timeout_s: float,
) -> None:
    _use_default_group(port)
    scheme = None
    try:
        model = build_model(model_name, seed=0)
        stamp(model, FIRST_VERSION)
        scheme = DistributedWeightSyncScheme(backend="gloo", timeout=timeout_s)
        scheme.init_on_sender(model_id="policy", num_workers=num_workers, model=model)
        blob = pickle.dumps(scheme)
        for _ in range(num_workers):
            handoff.put(blob)
        scheme.connect()
        workers = report[:, W.PHASE]
        _wait(lambda: bool((workers >= W.CONNECTED).all()), timeout_s, "every worker connecting")
        stalls, fresh = [], []
        for version in range(FIRST_VERSION + 1, FIRST_VERSION + 1 + warmup + updates):
            stamp(model, version)
            t0 = time.perf_counter_ns()
            scheme.send(weights=model)
            stall = time.perf_counter_ns() - t0
            _wait(
                lambda v=version: bool((report[:, W.VERSION] >= v).all()),
                timeout_s,
                f"every worker verifying version {version}",
            )
            if version > FIRST_VERSION + warmup:
                stalls.append(stall / 1e6)
                fresh.append((int(report[:, W.T_NS].max()) - t0) / 1e6)
        control[W.PROBE_REQUEST] = 1
        _wait(lambda: bool((report[:, W.PROBE] >= 1).all()), timeout_s, "every worker's checksum")
        results.send(
            {
                "blocking": {"stall_ms": summarize(stalls), "fresh_ms": summarize(fresh)},
                "checksum_ok": bool((report[:, W.CHECKSUM] == checksum(model)).all()),
                "torn_reads": int(report[:, W.BAD].sum()),
                "verified_version": int(report[:, W.VERSION].min()),
                "store_host": scheme._store_info["host"],
            }
        )
        scheme._send_instruction("stop")  # ends each worker's receiving thread (TorchRL's way)
        _wait(lambda: bool((workers >= W.DONE).all()), timeout_s, "every worker stopping")
    except BaseException as err:
        results.send({"error": f"did not run: {type(err).__name__}: {err}"})
        raise
    finally:
        if scheme is not None:
            scheme.shutdown()
        if dist.is_initialized():
            dist.destroy_process_group()


def measure_case(
    model_name: str, num_workers: int, updates: int, warmup: int, timeout_s: float
) -> dict[str, Any]:
    """Run one case; its figures, or ``{"error": "did not run: ..."}``."""
    ctx = mp.get_context("spawn")
    report = torch.zeros((num_workers, W.REPORT_COLUMNS), dtype=torch.int64).share_memory_()
    control = torch.zeros(2, dtype=torch.int64).share_memory_()
    handoff = ctx.Queue()
    results, trainer_end = ctx.Pipe(duplex=False)
    port, threads = free_port(), max(1, (os.cpu_count() or 1) // num_workers)
    trainer = ctx.Process(
        target=_trainer,
        args=(handoff, trainer_end, model_name, num_workers, port, report, control, updates,
              warmup, timeout_s),
        daemon=True,
    )  # fmt: skip
    workers = [
        ctx.Process(
            target=_worker,
            args=(handoff, w, model_name, port, report, control, threads, timeout_s),
            daemon=True,
        )
        for w in range(num_workers)
    ]
    procs = [trainer, *workers]
    # Every wait in the trainer is bounded by timeout_s; these are its waits, plus a margin.
    deadline = time.monotonic() + timeout_s * (updates + warmup + 6)
    try:
        for proc in procs:
            proc.start()
        while not results.poll(0.1):
            if not trainer.is_alive():
                return {"error": f"did not run: the trainer exited with code {trainer.exitcode}"}
            if time.monotonic() > deadline:
                return {"error": "did not run: no result before the deadline"}
        return results.recv()
    finally:
        control[W.STOP] = 1
        reap(procs, join_timeout=15)
        handoff.cancel_join_thread()
        handoff.close()
        results.close()
        trainer_end.close()


def _table(results: list[dict[str, Any]]) -> str:
    def pair(stats: dict[str, float]) -> str:
        return f"{stats['median']:.2f} / {stats['p95']:.2f}"

    lines = [
        "| scheme | model | MB | workers | send stall ms (med / p95) | freshness ms (med / p95) "
        "| verified in worker | raw gloo broadcast ms | x gloo |",
        "|" + "---|" * 9,
    ]
    for r in results:
        head = f"| {r['scheme']} | {r['model']} | {r['bytes'] / 2**20:.0f} | {r['workers']} |"
        if "error" in r:
            lines.append(f"{head} **{r['error']}** | | | | |")
            continue
        ok = "checksum ok" if r["checksum_ok"] else "**CHECKSUM MISMATCH**"
        gloo = (f"{r['gloo_ms']:.2f}", f"{r['x_gloo']:.2f}") if "gloo_ms" in r else ("n/a",) * 2
        lines.append(
            f"{head} {pair(r['blocking']['stall_ms'])} | {pair(r['blocking']['fresh_ms'])} "
            f"| v{r['verified_version']}, {ok}, {r['torn_reads']} torn | {gloo[0]} | {gloo[1]} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Measure every (model, worker count) case; print a table and the JSON, write ``--out``."""
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="1M,10M,100M", help="bench model names, by commas")
    parser.add_argument("--workers", default="1,2,4", help="worker counts, by commas")
    parser.add_argument("--updates", type=int, default=defaults.updates)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--timeout-s", type=float, default=defaults.timeout_s)
    parser.add_argument(
        "--gloo-repeats", type=int, default=defaults.floor_repeats, help="0: no gloo limit"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    machine = machine_info()
    results = []
    for model_name in args.models.split(","):
        model = build_model(model_name)
        nbytes = model_bytes(model)
        for num_workers in (int(n) for n in args.workers.split(",")):
            result = {
                "scheme": SCHEME,
                "strategy": "tensordict",
                "model": model_name,
                "params": sum(p.numel() for p in model.parameters()),
                "bytes": nbytes,
                "workers": num_workers,
                **measure_case(model_name, num_workers, args.updates, args.warmup, args.timeout_s),
            }
            if "error" not in result and args.gloo_repeats:
                result["gloo_ms"] = gloo_broadcast_ms(nbytes, num_workers, args.gloo_repeats)
                result["x_gloo"] = result["blocking"]["fresh_ms"]["median"] / result["gloo_ms"]
            results.append(result)
            print(_table([result]).splitlines()[-1], flush=True)
    machine["loadavg_end"] = os.getloadavg()
    config = vars(args) | {"out": str(args.out)}
    payload = {"machine": machine, "config": config, "results": results}
    print(_table(results) + json.dumps(payload, indent=2), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2))
    return results


if __name__ == "__main__":
    main()
