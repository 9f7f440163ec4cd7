"""The package's layering, read from its import statements, and the transport contracts.

The send path flows one way: schemes -> endpoints -> transports -> flat buffers -> weights. A
module may import only from its own layer's helpers or from layers below it, so the package has
no import cycle and a new backend is two transport classes and a small scheme class. TorchRL's
compatibility layers (``torchrl``, ``legacy``) stand beside the core, above it: they use the
core; no core module imports or inherits them.
"""

from __future__ import annotations

import ast
import functools
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from weightsync.transports import (
    NullReceiver,
    NullSender,
    PipeBroadcast,
    PipeReader,
    ReceiverTransport,
    SenderTransport,
    SharedMemReader,
    SharedMemTransport,
)
from weightsync.transports.distributed import DistributedReceiver, DistributedSender
from weightsync.transports.per_host import PerHostReceiver, PerHostSender
from weightsync.transports.ray import RayReceiver, RaySender

PACKAGE = Path(__file__).resolve().parents[2] / "weightsync"

#: Lowest first. A module imports only modules of a lower layer, or of its own package
#: (``weightsync.transports.pipe`` imports ``weightsync.transports.base``).
LAYERS = [
    {"errors", "extend", "launch", "lifetime", "tensordicts", "timeouts"},
    {"paths", "shm", "weights"},
    {"flat", "strategy"},
    {"binding", "sources", "group"},
    {"transports"},
    {"endpoints"},
    {"schemes"},
    {"legacy", "torchrl"},
    {"__init__"},
]
#: The core: what a new backend touches. It knows nothing of the compatibility layers.
CORE = ("transports", "endpoints", "schemes")
COMPATIBILITY = ("weightsync.legacy", "weightsync.torchrl")


def _layer(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else "__init__"
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


@functools.cache
def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    """weightsync modules imported at run time (``if TYPE_CHECKING:`` blocks excluded)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("weightsync"):
            for alias in node.names:  # ``from weightsync import lifetime`` imports a submodule
                submodule = f"{node.module}.{alias.name}"
                names.add(submodule if submodule in _modules() else node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("weightsync")}
    return names


def test_every_module_imports_only_from_layers_below_it():
    modules = _modules()
    assert {m.split(".")[1] for m in modules if m.count(".")} <= set().union(*LAYERS)
    upward = []
    for module, path in modules.items():
        if module == "weightsync":
            continue
        for imported in _imports(path):
            same_package = imported.split(".")[:2] == module.split(".")[:2]
            if _layer(imported) >= _layer(module) and not same_package:
                upward.append(f"{module} imports {imported}")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_no_core_module_imports_or_inherits_the_compatibility_layers():
    core = [m for m in _modules() if m.split(".")[1:2] and m.split(".")[1] in CORE]
    assert len(core) > 10
    imports = [f"{m} imports {i}" for m in core for i in _imports(_modules()[m])]
    assert not [line for line in imports if line.endswith(COMPATIBILITY)]
    inherited = [
        f"{cls.__module__}.{cls.__qualname__} inherits {base.__module__}.{base.__qualname__}"
        for module in core
        for cls in vars(importlib.import_module(module)).values()
        if isinstance(cls, type) and cls.__module__ == module
        for base in cls.__mro__
        if base.__module__ in COMPATIBILITY
    ]
    assert not inherited


def test_there_is_no_import_cycle():
    graph = {m: {i for i in _imports(p) if i in _modules()} for m, p in _modules().items()}
    visiting, done = set(), set()

    def visit(node: str, path: list[str]) -> None:
        if node in done:
            return
        assert node not in visiting, "import cycle: " + " -> ".join([*path, node])
        visiting.add(node)
        for nxt in graph[node]:
            visit(nxt, [*path, node])
        visiting.discard(node)
        done.add(node)

    for module in graph:
        visit(module, [])


def _members(protocol: type) -> set[str]:
    names = {n for n in vars(protocol) if not n.startswith("_")}
    return names | set(getattr(protocol, "__annotations__", {}))


@pytest.fixture
def built_transports():
    """One trainer-side and one worker-side transport of each single-host backend, built."""
    a, b = mp.Pipe()
    senders = [PipeBroadcast([a]), SharedMemTransport(), NullSender()]
    receivers = [PipeReader(b), SharedMemReader(b), NullReceiver()]
    yield senders, receivers
    a.close()
    b.close()


def _missing(transport: object, protocol: type) -> set[str]:
    return {m for m in _members(protocol) if not hasattr(transport, m)}


def test_every_transport_implements_its_protocol(built_transports):
    senders, receivers = built_transports
    for transports, protocol in ((senders, SenderTransport), (receivers, ReceiverTransport)):
        for transport in transports:
            assert not _missing(transport, protocol), type(transport).__name__
            assert isinstance(transport, protocol)


@pytest.mark.parametrize(
    ("sender", "receiver"),
    [
        (DistributedSender, DistributedReceiver),
        (PerHostSender, PerHostReceiver),
        (RaySender, RayReceiver),
    ],
)
def test_the_multi_host_transports_declare_every_protocol_member(
    sender: type, receiver: type
) -> None:
    """Built for real in test_scheme_distributed.py, test_scheme_per_host.py and
    test_scheme_ray.py (they need a store and peers, or a Ray instance)."""
    assert not _missing(sender, SenderTransport)
    assert not _missing(receiver, ReceiverTransport)


def test_importing_weightsync_installs_no_global_module_hooks():
    """torch's global registration hooks are installed by the first synchronised module only."""
    probe = (
        "import torch.nn.modules.module as m, weightsync\n"
        "hooks = lambda: sum(map(len, (m._global_parameter_registration_hooks, "
        "m._global_buffer_registration_hooks, m._global_module_registration_hooks)))\n"
        "before = hooks()\n"
        "from weightsync.binding import BoundModule\n"
        "import torch\n"
        "BoundModule(torch.nn.Linear(2, 2))\n"
        "print(before, hooks())\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "3"]
