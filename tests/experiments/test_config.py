"""Every config option composes and validates; bad values fail before any process starts, with
a message that says what is wrong and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from experiments.common.config import constructor_default, plain
from experiments.common.schemes import build_scheme
from experiments.config import ConfigError, RunConfig, resolve_device, validate
from experiments.factory import env_factory, policy_factory
from experiments.models import ActorCritic, count_parameters
from weightsync import (
    MultiProcessWeightSyncScheme,
    NoWeightSyncScheme,
    SharedMemWeightSyncScheme,
    WeightSyncScheme,
)

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
GROUPS = ("sync", "strategy", "model", "env", "device", "learner", "logger", "experiment")
SCHEMES = {
    "none": NoWeightSyncScheme,
    "shared-mem": SharedMemWeightSyncScheme,
    "pipe": MultiProcessWeightSyncScheme,
}


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


@pytest.fixture
def make_cfg() -> Callable[..., DictConfig]:
    """Compose ``conf/config.yaml`` with overrides, as ``python run.py`` would."""

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=list(overrides))

    return _compose


@pytest.fixture
def cuda_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.fixture
def cuda_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_the_groups_offer_the_documented_options() -> None:
    assert {"none", "pipe", "shared-mem"} <= set(options("sync"))
    assert options("strategy") == ["state_dict", "tensordict"]
    assert options("device") == ["auto", "cpu", "cuda"]
    assert {"default", "smoke"} <= set(options("experiment"))
    assert {"mlp", "mlp_10m", "mlp_100m"} <= set(options("model"))


#: what an option needs beside it to validate (a CNN reads frames: an Atari env)
COMPANIONS = {"model=nature_cnn": ["env=atari"], "model=impala_cnn": ["env=atari"]}


@pytest.mark.usefixtures("cuda_present")  # device=cuda validates where CUDA exists
@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in GROUPS for o in options(g)], ids=lambda x: x
)
def test_every_option_composes_and_validates(make_cfg, group: str, option: str) -> None:
    override = f"{group}={option}"
    cfg = make_cfg(override, *COMPANIONS.get(override, []))
    validate(cfg)


def test_the_default_config_is_a_validated_training_run(make_cfg) -> None:
    cfg = make_cfg()
    validate(cfg)
    assert cfg.run.num_workers == 2
    assert get_class(cfg.sync._target_) is MultiProcessWeightSyncScheme


@pytest.mark.parametrize("strategy", ["state_dict", "tensordict"])
@pytest.mark.parametrize("sync", sorted(SCHEMES))
def test_the_factory_builds_each_scheme_with_its_strategy(make_cfg, sync, strategy) -> None:
    cfg = make_cfg(f"sync={sync}", f"strategy={strategy}", "sync.timeout=3.5")
    scheme = build_scheme(cfg)
    assert type(scheme) is SCHEMES[sync]
    assert scheme.strategy.extract_as == strategy
    assert scheme.timeout == 3.5


def test_policy_and_env_factories_match_the_config(make_cfg) -> None:
    cfg = make_cfg("model.hidden_sizes=[32,16]", "env.num_envs=3")
    policy = policy_factory(cfg)()
    assert isinstance(policy, ActorCritic)
    assert [m.out_features for m in policy.actor if hasattr(m, "out_features")] == [32, 16, 2]
    env = env_factory(cfg)(device="cpu", seed=0)
    assert env.num_envs == 3 and env.obs.shape == (3, 4)


@pytest.mark.parametrize(("preset", "millions"), [("mlp_1m", 1.06), ("mlp_10m", 9.85)])
def test_model_presets_have_the_sizes_they_claim(make_cfg, preset, millions) -> None:
    policy = policy_factory(make_cfg(f"model={preset}"))()
    assert count_parameters(policy) / 1e6 == pytest.approx(millions, rel=0.01)


# ------------------------------------------------------------------------ rejected while composing
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("sync=foo", ["sync/foo", "none", "pipe", "shared-mem"]),
        ("strategy=pickle", ["strategy/pickle", "state_dict", "tensordict"]),
        ("device=tpu", ["device/tpu", "auto", "cpu", "cuda"]),
        ("run.num_workers=two", ["run.num_workers", "two", "Integer"]),
        ("sync.timeout=soon", ["sync.timeout", "soon", "Float"]),
        ("device.trainer=tpu", ["device.trainer", "tpu", "cpu", "cuda", "auto"]),
        ("run.on_worker_failure=retry", ["retry", "stop", "continue"]),
        ("model.activation=swish", ["swish", "tanh", "relu"]),
        ("strategy.extract_as=pickle", ["pickle", "state_dict", "tensordict"]),
        ("run.num_wrokers=2", ["num_wrokers"]),
        ("learner.correction=foo", ["foo", "none", "is", "vtrace"]),
        ("run.mode=later", ["later", "sync", "async"]),
        ("run.on_stale=forget", ["forget", "drop", "downweight"]),
        ("learner=sac", ["learner/sac", "ppo", "impala"]),
    ],
)
def test_unknown_options_and_wrong_types_fail_to_compose(make_cfg, override, expected) -> None:
    with pytest.raises((HydraException, OmegaConfBaseException)) as info:
        make_cfg(override)
    message = f"{info.value} {info.value.__cause__ or ''}"  # what Hydra prints
    for word in expected:
        assert word in message, f"{word!r} not in: {message}"


# -------------------------------------------------------------------------- rejected by validate()
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["run.num_workers=0"], ["run.num_workers=0", ">= 1"]),
        (["run.sync_every=0"], ["run.sync_every=0", ">= 1"]),
        (["env.num_envs=-1"], ["env.num_envs=-1", ">= 1"]),
        (["sync.timeout=0"], ["sync.timeout=0", "> 0"]),
        (["sync.timeout=inf"], ["sync.timeout=inf", "finite"]),
        (["run.startup_timeout=inf"], ["run.startup_timeout=inf", "finite"]),
        (["run.rollout_timeout=0"], ["run.rollout_timeout=0", "> 0"]),
        (["learner.rho_bar=0"], ["learner.rho_bar=0", "> 0"]),
        (["learner=impala", "learner.c_bar=-1"], ["learner.c_bar=-1", "> 0"]),
        (["run.max_staleness=-1"], ["run.max_staleness=-1", ">= 0", "null"]),
        (["run.max_staleness=2", "sync=none"], ["sync=none", "run.on_stale=downweight"]),
        (["run.max_staleness=3", "run.sync_every=10"], ["run.max_staleness=3", ">= 9"]),
        (["model.hidden_sizes=[]"], ["model.hidden_sizes", ">= 1"]),
        (["run.total_frames=100"], ["run.total_frames=100", "2048"]),
        (["learner.minibatches=5000"], ["learner.minibatches=5000", "2048"]),
    ],
)
def test_values_that_cannot_run_raise_one_paragraph_config_errors(
    make_cfg, overrides, expected
) -> None:
    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert "\n" not in message
    for word in expected:
        assert word in message, f"{word!r} not in: {message}"


@pytest.mark.usefixtures("cuda_absent")
@pytest.mark.parametrize(
    ("overrides", "role"),
    [(["device=cuda"], "trainer"), (["device.worker=cuda"], "worker")],
)
def test_cuda_is_refused_on_a_machine_without_it(make_cfg, overrides, role) -> None:
    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError, match=f"device.{role}=cuda.*device=cpu.*device=auto"):
        validate(cfg)


@pytest.mark.usefixtures("cuda_absent")
def test_auto_device_falls_back_to_cpu(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine without CUDA (simulated where there is one) ``device=auto`` is accepted
    where ``device=cuda`` is refused, and both roles run on the CPU; with CUDA, on CUDA."""
    cfg = make_cfg("device=auto")
    roles = ("trainer", "worker")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    validate(cfg)
    with pytest.raises(ConfigError, match=r"device\.trainer=cuda, but torch sees no CUDA"):
        validate(make_cfg("device=cuda"))
    assert [resolve_device(cfg.device[role]) for role in roles] == [torch.device("cpu")] * 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [resolve_device(cfg.device[role]) for role in roles] == [torch.device("cuda")] * 2


def test_scheme_targets_are_weight_sync_schemes(make_cfg) -> None:
    for option in options("sync"):
        assert issubclass(get_class(make_cfg(f"sync={option}").sync._target_), WeightSyncScheme)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_run_py_reports_a_config_error_and_starts_nothing(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "run.py", "run.num_workers=0", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Invalid configuration: run.num_workers=0" in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


# ------------------------------------------------------------- one typed schema per sync option
def test_each_sync_option_has_its_own_schema_with_its_own_arguments(make_cfg) -> None:
    cfg = make_cfg("sync=shared-mem", "sync.num_buffers=4", "sync.timeout=2.5")
    validate(cfg)
    scheme = build_scheme(cfg)
    assert type(scheme) is SharedMemWeightSyncScheme
    assert (scheme.num_buffers, scheme.timeout) == (4, 2.5)
    assert make_cfg("sync=shared-mem").sync.num_buffers is None  # the library's default


def test_torchrl_spelling_shared_mem_is_the_same_option(make_cfg) -> None:
    assert make_cfg("sync=shared_mem", "sync.num_buffers=3") == make_cfg(
        "sync=shared-mem", "sync.num_buffers=3"
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["sync=shared-mem", "sync.num_buffers=four"], ["sync.num_buffers", "four", "Integer"]),
        (["sync=pipe", "sync.num_buffers=4"], ["num_buffers", "PipeSyncConfig"]),
        (["sync=none", "sync.num_bufers=4"], ["num_bufers", "NoneSyncConfig"]),
    ],
)
def test_a_sync_option_refuses_arguments_its_scheme_does_not_take(
    make_cfg, overrides, expected
) -> None:
    with pytest.raises((HydraException, OmegaConfBaseException)) as info:
        make_cfg(*overrides)
    message = f"{info.value} {info.value.__cause__ or ''}"
    for word in expected:
        assert word in message, f"{word!r} not in: {message}"


@pytest.mark.parametrize("value", [1, 65])
def test_num_buffers_outside_the_ring_size_is_a_config_error(make_cfg, value) -> None:
    with pytest.raises(ConfigError, match=f"sync.num_buffers={value} .* 2 to 64"):
        validate(make_cfg("sync=shared-mem", f"sync.num_buffers={value}"))


# ------------------------------------------------------------------------ one source of defaults
def _schema_defaults(node: DictConfig) -> DictConfig:
    """The defaults of the schema ``node`` was typed by (its dataclass, fresh)."""
    return OmegaConf.structured(OmegaConf.get_type(node))


def test_the_default_run_takes_every_default_from_one_place(make_cfg) -> None:
    """Where a node's ``_target_`` has a default for an argument, the composed default run uses
    exactly it (no YAML or schema value beside it); every other value is the schema's."""
    cfg = make_cfg()
    for group in ("sync", "strategy", "model", "env", "learner"):
        target = get_class(cfg[group]._target_)
        for key, value in plain(cfg[group]).items():
            if key == "_target_":
                continue
            try:
                default = constructor_default(target, key)
            except TypeError:  # the constructor has none: the schema's field is the one source
                default = plain(_schema_defaults(cfg[group]))[key]
            if isinstance(default, tuple):
                default = list(default)
            assert value == default, (
                f"{group}.{key}: {value!r} composed, {default!r} is the default"
            )
    assert plain(cfg.run) | {"total_frames": None} == plain(OmegaConf.structured(RunConfig)) | {
        "total_frames": None
    }


def _yaml_values(path: Path) -> dict:
    """The values a YAML option sets (its defaults list aside), as dotted keys."""
    raw = yaml.safe_load(path.read_text()) or {}
    raw.pop("defaults", None)
    return {
        k: v for k, v in _dotted(raw).items() if k != "_target_" and not k.endswith("._target_")
    }


def _dotted(node: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            flat |= _dotted(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, o) for g in ("sync", "strategy", "model", "env", "learner") for o in options(g)],
    ids=lambda x: x,
)
def test_no_option_restates_a_default(make_cfg, group, option) -> None:
    """An option sets only what it changes: a value equal to the default would be a second
    source that drifts (as PPO's learning rate once did: 3e-4 in one place, 5e-4 in another)."""
    cfg = make_cfg(f"{group}={option}")
    path = CONF / group / f"{option}.yaml"
    # An option in the global package (env=atari also picks a model) names each key in full.
    in_global = path.read_text().startswith("# @package _global_")
    for key, value in _yaml_values(path).items():
        node, rest = key.split(".", 1) if in_global else (group, key)
        schema = _schema_defaults(cfg[node])  # unresolved: a default may be an interpolation
        defaults = _dotted(OmegaConf.to_container(schema, resolve=False, enum_to_str=True))
        assert value != defaults[rest], f"{group}/{option}.yaml restates {key}={value!r}"


def test_bench_yaml_sets_no_benchmark_setting() -> None:
    """BenchConfig's fields are the benchmark's one source of defaults."""
    assert not any(key.startswith("bench.") for key in _yaml_values(CONF / "bench.yaml"))


def test_the_training_config_has_no_benchmark_keys(make_cfg) -> None:
    cfg = make_cfg()
    assert "bench" not in cfg and "job" not in cfg
