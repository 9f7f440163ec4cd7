"""The actor-learner training loop: collect, learn, sync, log.

``num_workers`` workers (spawned here, or the other ranks of a launch) act in their own batched
environments with their copy of the policy and send rollouts, tagged with the weight version
that produced them and the behaviour policy's log-probabilities. The trainer learns (PPO or
IMPALA, with the off-policy correction of ``learner.correction``) and pushes its weights through
the configured scheme every ``sync_every`` updates. While the trainer learns, the workers
already collect the next rollouts with the weights they hold, so the data is typically one
update old (staleness 1) in ``run.mode=sync``; ``run.mode=async`` never lets a worker wait, and
the staleness is whatever the workers' pace makes it (``experiments/collection.py``). With
``sync=none`` the workers never get new weights, their return stays at the initial policy's
level and the staleness grows with every update. That contrast is the experiment.

Writes ``metrics.jsonl`` (one line per iteration) and ``summary.json`` into ``out_dir``, and
hands every line's numbers to the loggers of the ``logger`` group.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from experiments.checksum import weights_checksum
from experiments.collection import Batch, Collection, StalenessBound
from experiments.common.config import plain
from experiments.common.schemes import build_scheme
from experiments.common.stats import percentile
from experiments.config import resolve_device
from experiments.crew import Crew, RunStopped
from experiments.distributed import RankPool, build_launched_scheme
from experiments.factory import actor_spec, build_learner, build_loggers
from experiments.learner import PolicyGradientLearner
from experiments.metrics import MetricsLog, mean, rounded, write_summary
from experiments.pool import WorkerPool
from experiments.progress import Progress
from experiments.ray_pool import RayPool
from experiments.sync import SyncStep
from experiments.workers import Workers
from weightsync.launch import LaunchInfo

log = logging.getLogger(__name__)

RETURN_WINDOW = 50  # episodes averaged for the initial and the final return


def train(cfg: DictConfig, out_dir: Path, launch: LaunchInfo | None = None) -> dict[str, Any]:
    """Run one training job as ``cfg`` says (validated); return the summary it wrote.

    ``launch``: this process is rank 0 of a torchrun/Slurm launch, whose other ranks are the
    workers (experiments/distributed.py); None: the workers are spawned here."""
    run = cfg.run
    torch.set_num_threads(run.torch_threads)
    spec = actor_spec(cfg)
    torch.manual_seed(cfg.seed)  # workers seed alike, so they start from the same weights
    policy = spec.make_policy().to(resolve_device(cfg.device.trainer))
    learner = build_learner(cfg, policy, seed=cfg.seed)
    if launch is not None:  # workers are the other ranks of the launch, on any machine
        scheme = build_launched_scheme(cfg, launch)
        workers: Workers = RankPool(launch, startup_timeout=run.startup_timeout,
                                    bind=cfg.sync.get("bind"))  # fmt: skip
    elif (scheme := build_scheme(cfg)).backend_name == "ray":  # Ray actors, on any node
        workers = RayPool(spec, run.num_workers, scheme, startup_timeout=run.startup_timeout,
                          address=cfg.sync.get("address"))  # fmt: skip
    else:  # workers are processes spawned here
        workers = WorkerPool(spec, run.num_workers, scheme, startup_timeout=run.startup_timeout)
    crew = Crew(workers, scheme, policy, rollout_timeout=run.rollout_timeout,
                on_worker_failure=plain(run.on_worker_failure))  # fmt: skip
    num_iterations = run.total_frames // (run.num_workers * cfg.env.num_envs * run.rollout_steps)
    collection = Collection(crew, plain(run.mode), StalenessBound(run.max_staleness,
                            plain(run.on_stale)), num_iterations)  # fmt: skip
    log.info(
        "training with sync=%s strategy=%s, mode=%s: %d workers, %d iterations, outputs in %s",
        scheme.backend_name, scheme.strategy.extract_as, plain(run.mode), run.num_workers,
        num_iterations, out_dir,
    )  # fmt: skip

    metrics = MetricsLog(out_dir, build_loggers(cfg))
    progress = Progress(num_iterations, run.log_every)
    tally = Tally(initial_checksum=weights_checksum(policy))
    sync = crew.sync
    try:
        with crew:
            tally.started = last = time.perf_counter()
            progress.start()
            collection.start()
            for iteration in range(1, num_iterations + 1):
                # 1. Collect: the workers' next rollouts (sync: one from each, and at once ask
                #    for the next, collected with the weights they hold while the trainer learns;
                #    async: the first to arrive), those older than run.max_staleness left out.
                batch = collection.next(iteration, tally.updates)

                # 2. Learn: one update. The sync started last iteration must be complete before
                #    the first optimizer step changes the weights: ``before_step``.
                syncs_before = len(sync.latencies_ms)
                stats = learner.update(batch.trajectory, before_step=sync.wait)
                tally.updates += 1

                # 3. Sync: start pushing the new weights; it completes during the next update.
                if tally.updates % run.sync_every == 0:
                    sync.start(tally.updates)

                # 4. Log.
                now = time.perf_counter()
                tally.add(batch, stats)
                record = {
                    "iteration": iteration,
                    "frames": tally.frames,
                    "time_s": rounded(now - tally.started),
                    "episode_return": rounded(mean(batch.episode_returns)),
                    "episodes": len(batch.episode_returns),
                    **{k: rounded(v, 5) for k, v in stats.items()},
                    "frames_per_s": rounded(batch.frames / (now - last), 1),
                    "sync_latency_ms": rounded(mean(sync.latencies_ms[syncs_before:])),
                    "bytes_moved": sync.bytes_moved,
                    "staleness": mean(batch.staleness),
                    "staleness_min": min(batch.staleness),
                    "staleness_max": max(batch.staleness),
                    "rollouts_dropped": batch.dropped,
                    "trainer_version": sync.version,
                    "num_workers": len(crew.active),
                }
                metrics.write(record)
                progress.update(record)
                last = now

            tally.finished = time.perf_counter()
            # After the last update: every worker gets the final weights and proves it.
            collection.finish()
            sync.flush(tally.updates)
            tally.reports = crew.report()
    except KeyboardInterrupt:
        tally.status = "interrupted"
        log.warning("interrupted: workers stopped, metrics so far kept in %s", metrics.path)
    except RunStopped as err:
        tally.status, tally.error = "worker_failed", str(err)
        log.error("run stopped: %s", err)
    except Exception as err:
        tally.status, tally.error = "error", f"{type(err).__name__}: {err}"
        raise
    finally:
        progress.close()
        metrics.close()
        summary = _summary(cfg, learner, sync, tally)
        write_summary(out_dir, summary)
    log.info(
        "%s in %.1f s: return %s -> %s, %s frames/s, sync p50 %s ms, weights_match=%s",
        tally.status, summary["wall_time_s"], summary["initial_return"], summary["final_return"],
        summary["frames_per_s"], summary["sync_latency_p50_ms"], summary["weights_match"],
    )  # fmt: skip
    return summary


@dataclass
class Tally:
    """What the run has done so far, and how it ended."""

    initial_checksum: str  # of the weights every process started from
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None  # when the last update was done (None: it was not)
    frames: int = 0
    updates: int = 0
    returns: list[float] = field(default_factory=list)  # every finished episode, in order
    staleness: list[int] = field(default_factory=list)  # of every rollout learned on
    batch_staleness: list[float] = field(default_factory=list)  # per iteration, mean
    dropped: int = 0  # rollouts left out for being older than run.max_staleness
    ratio_means: list[float] = field(default_factory=list)  # per iteration: mean of pi/mu
    ratio_stds: list[float] = field(default_factory=list)  # per iteration: std of pi/mu
    reports: dict[int, tuple[int, str]] = field(default_factory=dict)  # worker: (version, digest)
    status: str = "completed"
    error: str | None = None

    def add(self, batch: Batch, stats: dict[str, float]) -> None:
        """Count an iteration that learned on ``batch`` with ``stats``."""
        self.frames += batch.frames
        self.returns += batch.episode_returns
        self.staleness += batch.staleness
        self.batch_staleness.append(mean(batch.staleness))
        self.dropped += batch.dropped
        self.ratio_means.append(stats["importance_ratio_mean"])
        self.ratio_stds.append(stats["importance_ratio_std"])


def _summary(
    cfg: DictConfig, learner: PolicyGradientLearner, sync: SyncStep, tally: Tally
) -> dict[str, Any]:
    """The run in one JSON object (``summary.json``); see the README for every field."""
    policy = learner.model
    wall_time_s = (tally.finished or time.perf_counter()) - tally.started
    latencies = sync.latencies_ms
    final = weights_checksum(policy)
    held = {
        str(w): {"version": version,
                 "weights": _which_weights(digest, final, tally.initial_checksum)}
        for w, (version, digest) in tally.reports.items()
    }  # fmt: skip
    return {
        "status": tally.status,
        "error": tally.error,
        "sync": sync.scheme.backend_name,
        "strategy": str(sync.scheme.strategy.extract_as),
        "scheme": type(sync.scheme).__name__,
        "model_parameters": sum(p.numel() for p in policy.parameters()),
        "model_bytes": sync.model_bytes,
        "num_workers": cfg.run.num_workers,
        "trainer_device": str(next(policy.parameters()).device),
        "worker_device": str(resolve_device(cfg.device.worker)),
        "num_updates": tally.updates,
        "frames": tally.frames,
        "wall_time_s": rounded(wall_time_s),
        "frames_per_s": rounded(tally.frames / wall_time_s, 1),
        "episodes": len(tally.returns),
        "initial_return": rounded(mean(tally.returns[:RETURN_WINDOW])),
        "final_return": rounded(mean(tally.returns[-RETURN_WINDOW:])),
        "sync_count": len(latencies),
        "sync_latency_p50_ms": rounded(percentile(latencies, 50)),
        "sync_latency_p95_ms": rounded(percentile(latencies, 95)),
        "mode": plain(cfg.run.mode),
        "learner": type(learner).__name__,
        "correction": learner.correction,
        "staleness_mean": rounded(mean(tally.batch_staleness)),
        "staleness_min": min(tally.staleness, default=None),
        "staleness_max": max(tally.staleness, default=None),
        "rollouts_dropped": tally.dropped,
        "importance_ratio_mean": rounded(mean(tally.ratio_means), 5),
        "importance_ratio_std": rounded(mean(tally.ratio_stds), 5),
        "bytes_moved": sync.bytes_moved,
        "trainer_version": sync.version,
        # Every worker holds exactly the trainer's final weights. False for sync=none, whose
        # workers hold their "initial" ones; null when the run ended before the check.
        "weights_match": all(h["weights"] == "latest" for h in held.values()) if held else None,
        "workers": held,
    }


def _which_weights(digest: str, final: str, initial: str) -> str:
    """Name the weights a worker reported: the trainer's final ones, the initial ones, other."""
    if digest == final:
        return "latest"
    return "initial" if digest == initial else "other"
