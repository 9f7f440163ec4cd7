"""Worker process for the distributed-scheme tests (importable by spawned children)."""

from __future__ import annotations

import torch.distributed as dist

from tests.helpers.models import make_model, state_of


def serve_broadcasts(scheme, worker_id: int, ctl, seed: int = 1) -> None:
    """Join the scheme's group, then apply updates until the trainer closes; report each state.

    Replies on ``ctl``: ``("state", version, state_dict, default_group_initialised)`` after each
    applied update, ``("closed",)`` at the end, or ``("error", type, message)``.
    """
    try:
        model = make_model(seed)
        scheme.init_on_receiver("policy", model=model, worker_id=worker_id)
        scheme.connect()
        receiver = scheme.get_receiver()
        ctl.send(("state", receiver.version, state_of(model), dist.is_initialized()))
        while not scheme.closed:
            if scheme.receive(0.05):
                ctl.send(("state", receiver.version, state_of(model), dist.is_initialized()))
        ctl.send(("closed",))
        scheme.shutdown()
    except Exception as err:
        ctl.send(("error", type(err).__name__, str(err)))
