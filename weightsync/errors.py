"""Exception types raised by weightsync.

Every error names the object involved (model id, worker, version), what was expected, what was
found and what to do, so that a failure in a 64-worker job can be acted on from the log line alone.
"""

from __future__ import annotations


class WeightSyncError(RuntimeError):
    """Base class of every weightsync error.

    ``workers`` lists the workers the error is about (empty when it is about none in particular),
    so a training loop can drop them and go on with the survivors.
    """

    def __init__(self, message: str = "", *, workers: list[int] | None = None):
        super().__init__(message)
        self.workers: list[int] = list(workers or [])


class WeightMismatchError(WeightSyncError, ValueError):
    """Weights do not fit their destination: missing or extra keys, wrong shapes or dtypes.

    Raised *before* anything is written, so the destination keeps its previous weights.
    ``problems`` lists one human-readable line per offending key.
    """

    def __init__(self, model_id: str | None, problems: list[str]):
        self.problems = problems
        self.model_id = model_id
        where = f"model {model_id!r}" if model_id is not None else "the destination"
        listing = "\n  ".join(problems)
        super().__init__(
            f"weights do not fit {where}; nothing was applied, its weights are unchanged:\n"
            f"  {listing}\n"
            "Send weights extracted from a model of the same architecture (same keys, shapes "
            "and dtypes)."
        )

    def __reduce__(self):  # rebuilt from its fields, so it can cross a process boundary
        return (type(self), (self.model_id, self.problems))


class NonFiniteWeightsError(WeightSyncError, ValueError):
    """Weights hold NaN or infinite values and the scheme was asked to refuse them."""


class UnmaterializedWeightsError(WeightSyncError, ValueError):
    """Weights (or a model) on PyTorch's ``meta`` device: shapes without data, so there is
    nothing to send, or nothing to write into. Raised before anything moves."""


class SyncTimeoutError(WeightSyncError, TimeoutError):
    """A peer did not answer within the timeout; the message names who and what."""


class PeerDiedError(WeightSyncError, ConnectionError):
    """The other end of a connection is gone (worker or trainer process died)."""


class SchemeMismatchError(WeightSyncError, TypeError):
    """The trainer and a worker use different schemes (e.g. ``pipe`` on one end, ``shared-mem``
    on the other): raised in the worker at the first message; the trainer hears of it as a
    :class:`WorkerRejectedError` naming the worker."""


class SharedMemoryError(WeightSyncError, MemoryError):
    """Shared memory (``/dev/shm``) is too small for what must be shared; nothing was created."""


class WorkerRejectedError(WeightSyncError):
    """A worker refused an update (its model did not fit); the worker keeps its old weights."""

    def __init__(self, model_id: str, version: int, rejections: dict[int, str]):
        lines = "\n".join(f"[worker {w}] {msg}" for w, msg in sorted(rejections.items()))
        super().__init__(
            f"version {version} of model {model_id!r} was refused by worker(s) "
            f"{sorted(rejections)}; they keep their previous weights and stay usable:\n{lines}",
            workers=sorted(rejections),
        )
        self.model_id = model_id
        self.version = version
        self.rejections = rejections

    def __reduce__(self):  # rebuilt from its fields, so it can cross a process boundary
        return (type(self), (self.model_id, self.version, self.rejections))


class ModelPathError(WeightSyncError, LookupError):
    """A model id path (``"env.transform[0].module"``) does not resolve on its context."""
