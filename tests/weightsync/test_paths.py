"""Model ids are paths on a context: attributes, [int] and ["key"] subscripts; a path that does
not resolve names the step that failed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from torch import nn

from weightsync import ModelPathError, resolve_model_id
from weightsync.paths import parse_model_id


@pytest.fixture
def context():
    critic = nn.Linear(4, 1)
    return SimpleNamespace(
        policy=nn.Linear(4, 2),
        env=SimpleNamespace(transform=[SimpleNamespace(module=nn.Linear(3, 3))]),
        models={"critic": critic, "with.dot": critic},
    )


@pytest.mark.parametrize(
    ("model_id", "steps"),
    [
        ("policy", ["policy"]),
        ("env.transform[0].module", ["env", "transform", 0, "module"]),
        ('models["critic"]', ["models", ("critic",)]),
        ("models['critic']", ["models", ("critic",)]),
        ("a[0][-1].b", ["a", 0, -1, "b"]),
    ],
)
def test_parse(model_id, steps):
    assert parse_model_id(model_id) == steps


def test_resolve_each_form(context):
    assert resolve_model_id(context, "policy") is context.policy
    assert resolve_model_id(context, "env.transform[0].module") is context.env.transform[0].module
    assert resolve_model_id(context, 'models["critic"]') is context.models["critic"]
    assert resolve_model_id(context, 'models["with.dot"]') is context.models["critic"]


@pytest.mark.parametrize(
    ("model_id", "failed_step", "after"),
    [
        ("value", "value", "<context>"),
        ("env.transforms[0]", "transforms", "env"),
        ("env.transform[1].module", "[1]", "env.transform"),
        ("env.transform[0].net", "net", "env.transform[0]"),
        ('models["actor"]', "['actor']", "models"),
        ("policy[0]", "[0]", "policy"),
    ],
)
def test_a_path_that_does_not_resolve_names_the_failing_step(context, model_id, failed_step, after):
    with pytest.raises(ModelPathError) as info:
        resolve_model_id(context, model_id)
    message = str(info.value)
    assert repr(model_id) in message
    assert f"step {failed_step!r} failed after {after!r}" in message


@pytest.mark.parametrize(
    "model_id", ["", "policy.", ".policy", "policy..x", "models[critic]", "a b"]
)
def test_malformed_paths_are_refused_with_the_grammar(model_id):
    with pytest.raises(ModelPathError, match="model id"):
        parse_model_id(model_id)


def test_path_errors_are_lookup_errors(context):
    with pytest.raises(LookupError):
        resolve_model_id(context, "nothing")
