"""``sync=shared-mem``: versioned snapshots in shared memory, adopted without a copy."""

from __future__ import annotations

from typing import Any

from weightsync.schemes.base import WeightSyncScheme
from weightsync.strategy import WeightFormat
from weightsync.tensordicts import is_tensordict
from weightsync.transports.shared_mem import SharedMemReader, SharedMemTransport


class SharedMemWeightSyncScheme(WeightSyncScheme, backend="shared-mem"):
    """Publish each update as an immutable snapshot in shared memory.

    A send copies the weights into a free snapshot buffer (one block copy that ``send_async``
    overlaps with the trainer's next forward/backward) and publishes it; workers adopt it at
    their next ``receive()`` by pointing their parameters at it, copying nothing. The buffers'
    handles cross each worker's pipe once; after that no weight byte goes through a pipe.

    Args:
        policy_weights: optional weights to register the model with (default: the model's own),
            or TorchRL's ``{model_id: TensorDict}``, which registers each model id's weights.
        strategy: the weight format at the API boundary.
        auto_register: create the shared buffers on the first send (else call
            :meth:`register_shared_weights` first).
        num_buffers: snapshot buffers per model (default ``num_workers + 2``: never waits).
        per_worker_weights: TorchRL's option to give each worker its own copy of the weights;
            accepted for compatibility and always true here: a worker's parameters are a
            published snapshot, never the trainer's live tensors nor another worker's.
        **kwargs: ``timeout``, ``reject_non_finite``, ``bind_source`` (see WeightSyncScheme).

    Worker parameters are views of a published snapshot, mapped read-only in the worker: an
    in-place write into them stops the worker (SIGSEGV) rather than reach the other workers.
    """

    def __init__(
        self,
        policy_weights: Any = None,
        strategy: WeightFormat = "tensordict",
        auto_register: bool = True,
        *,
        num_buffers: int | None = None,
        per_worker_weights: bool = False,
        **kwargs: Any,
    ):
        if isinstance(policy_weights, str):
            raise TypeError(
                f"SharedMemWeightSyncScheme's first argument is policy_weights, got the string "
                f"{policy_weights!r}; pass the format by keyword: strategy={policy_weights!r} "
                "(TorchRL's scheme takes strategy first)"
            )
        super().__init__(strategy, **kwargs)
        self.per_worker_weights = per_worker_weights
        self.policy_weights = policy_weights
        self.auto_register = auto_register
        self.num_buffers = num_buffers

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["policy_weights"] = None  # weights travel through the shared buffers, not pickles
        return state

    def _build_sender_transport(
        self, pipes: list | None, num_workers: int | None
    ) -> SharedMemTransport:
        if not pipes:
            raise ValueError(
                "the shared-mem scheme hands its buffers to workers over one pipe each: "
                "init_on_sender(model_id, pipes=[...]) or a context with a .pipes attribute"
            )
        transport = SharedMemTransport(
            self.weights_by_model,
            self.auto_register,
            num_buffers=self.num_buffers,
            timeout=self.timeout,
        )
        for pipe in pipes:
            transport.register_pipe(pipe)
        return transport

    def _build_receiver_transport(self, pipe: Any) -> SharedMemReader:
        if pipe is None:
            raise ValueError(
                "the shared-mem scheme receives its buffers over the worker's pipe: "
                "init_on_receiver(model_id, pipe=...) or a context with a .pipe attribute"
            )
        return SharedMemReader(pipe, self.timeout)

    @property
    def weights_by_model(self) -> dict[str, Any]:
        """``policy_weights`` as ``{model_id: weights}``: TorchRL's mapping of model ids to
        TensorDicts as it is, other weights as this scheme's model's (empty without any)."""
        weights = self.policy_weights
        if weights is None:
            return {}
        if (
            isinstance(weights, dict)
            and len(weights)
            and all(is_tensordict(w) for w in weights.values())
        ):
            return dict(weights)
        return {self.model_id: weights}

    def register_shared_weights(self, model_id: str, weights: Any) -> None:
        """Create the shared buffers for ``model_id`` now and hand them to the workers."""
        if self._transport is None:
            raise RuntimeError("call init_on_sender() before register_shared_weights()")
        self._transport.register_weights(model_id, weights)
