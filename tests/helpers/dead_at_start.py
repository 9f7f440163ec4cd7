"""Workers that die before they connect (importable by spawned children)."""

from __future__ import annotations


def fails_to_start(*channels) -> None:
    """A worker whose set-up fails before it builds anything of weightsync (a missing package,
    as a TorchRL env factory meets it): it exits with code 1."""
    import an_env_package_that_is_not_installed  # noqa: F401


def fails_after_init(scheme, pipe) -> None:
    """A worker that builds its receiver, then fails before ``connect()``."""
    from tests.helpers.models import make_model

    scheme.init_on_receiver("policy", model=make_model(seed=1), pipe=pipe)
    raise RuntimeError("the worker's env could not be built")
