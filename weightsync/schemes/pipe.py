"""``sync=pipe``: one multiprocessing pipe per worker, each update acknowledged."""

from __future__ import annotations

from typing import Any

from weightsync.schemes.base import WeightSyncScheme
from weightsync.transports.pipe import PipeBroadcast, PipeReader


class MultiProcessWeightSyncScheme(WeightSyncScheme, backend="pipe"):
    """Push weights to each worker over its own pipe; ``send`` returns once all have applied them.

    Weight bytes never go through the pipe: the trainer's model lives in (or is copied to) one
    shared staging buffer whose handle crosses each pipe once; an update is a short message, on
    which every worker copies the buffer into its own model (in parallel) and acknowledges.

    Example:
        >>> import torch, torch.multiprocessing as mp
        >>> trainer_end, worker_end = mp.Pipe()
        >>> scheme = MultiProcessWeightSyncScheme(strategy="tensordict")
        >>> scheme.init_on_sender("policy", model=torch.nn.Linear(4, 2), pipes=[trainer_end])
        >>> # in the worker: scheme.init_on_receiver("policy", model=copy, pipe=worker_end)
    """

    def _build_sender_transport(self, pipes: list | None, num_workers: int | None) -> PipeBroadcast:
        if not pipes:
            raise ValueError(
                "the pipe scheme needs one pipe per worker on the sender: "
                "init_on_sender(model_id, pipes=[...]) or a context with a .pipes attribute"
            )
        if num_workers is not None and num_workers != len(pipes):
            raise ValueError(f"num_workers={num_workers} but {len(pipes)} pipes were given")
        return PipeBroadcast(list(pipes), self.timeout)

    def _build_receiver_transport(self, pipe: Any) -> PipeReader:
        if pipe is None:
            raise ValueError(
                "the pipe scheme needs this worker's pipe: init_on_receiver(model_id, pipe=...) "
                "or a context with a .pipe attribute"
            )
        return PipeReader(pipe, self.timeout)
