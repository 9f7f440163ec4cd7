"""TensorDict, imported when one is met or made, not when ``weightsync`` is.

``import tensordict`` costs seconds (it imports ``torch._dynamo``), and every worker process
pays it at start-up. Nothing can be a TensorDict before tensordict is imported, so a process
that syncs state_dicts never needs it; one that is given or asks for a TensorDict imports it
then.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tensordict import TensorDictBase


def is_tensordict(obj: Any) -> bool:
    """Whether ``obj`` is a TensorDict (of any kind), without importing tensordict."""
    module = sys.modules.get("tensordict")
    return module is not None and isinstance(obj, module.TensorDictBase)


def is_tensordict_class(cls: type) -> bool:
    """Whether ``cls`` is a TensorDict class, without importing tensordict."""
    module = sys.modules.get("tensordict")
    return module is not None and issubclass(cls, module.TensorDictBase)


def empty_tensordict() -> TensorDictBase:
    """A new, empty TensorDict (tensordict is imported here, the first time one is made)."""
    from tensordict import TensorDict

    return TensorDict()
