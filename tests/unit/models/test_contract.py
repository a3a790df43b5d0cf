"""River's estimator checks, run over every detector :mod:`models.online` exports.

Each detector is built from its ``_unit_test_params()`` and fed a seeded stream. A class
opts out of a check only through ``_unit_test_skips()`` (none does yet).
"""

from __future__ import annotations

import copy
import inspect
import math
import pickle
import random
from collections.abc import Iterator
from typing import Any

import pytest

import models.online as online

DETECTORS = [
    obj
    for name in online.__all__
    if inspect.isclass(obj := getattr(online, name))
    and callable(getattr(obj, "learn_one", None))
    and callable(getattr(obj, "score_one", None))
]


def _stream(seed: int, n: int = 120) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    for _ in range(n):
        hour = rng.uniform(0, 24)
        yield {
            "a": rng.gauss(1.0, 0.05),
            "b": rng.uniform(0, 10),
            "hours_from_0300": abs((hour - 3 + 12) % 24 - 12),
            "token_night_share": rng.random() * 0.4,
            "token_night_sessions": float(rng.randrange(3)),
            "energy_over_power_integral": 1.0 + rng.gauss(0, 0.01),
        }


def _make(cls: type) -> Any:
    return cls(**cls._unit_test_params())


def _skips(cls: type) -> set[str]:
    return set(getattr(cls, "_unit_test_skips", lambda: set())())


def test_every_detector_is_checked() -> None:
    assert {c.__name__ for c in DETECTORS} == {"FleetHalfSpaceTrees", "RobustBaseline"}


@pytest.fixture(params=DETECTORS, ids=lambda c: c.__name__)
def cls(request: pytest.FixtureRequest) -> type:
    return request.param


def _check(cls: type, name: str) -> None:
    if name in _skips(cls):
        pytest.skip(f"{cls.__name__} opts out of {name}")


def test_learn_one_returns_none_and_scores_are_floats_in_range(cls: type) -> None:
    _check(cls, "range")
    model = _make(cls)
    for x in _stream(1):
        s = model.score_one(x)
        assert isinstance(s, float) and 0.0 <= s <= 1.0 and not math.isnan(s)
        assert model.learn_one(x) is None


def test_x_is_not_mutated(cls: type) -> None:
    _check(cls, "x_not_mutated")
    model = _make(cls)
    for x in _stream(2):
        before = copy.deepcopy(x)
        model.score_one(x)
        model.learn_one(x)
        assert x == before


def test_score_one_is_pure(cls: type) -> None:
    _check(cls, "score_pure")
    model = _make(cls)
    for i, x in enumerate(_stream(3)):
        if i % 7 == 0:
            state = pickle.dumps(model)
            model.score_one(x)
            model.score_one({**x, "a": 99.0, "hours_from_0300": 0.0})
            assert pickle.dumps(model) == state
        model.learn_one(x)


def test_pickling_mid_stream_gives_identical_later_scores(cls: type) -> None:
    _check(cls, "pickle_mid_stream")
    model = _make(cls)
    xs = list(_stream(4))
    for x in xs[:70]:
        model.learn_one(x)
    clone = pickle.loads(pickle.dumps(model))
    for x in xs[70:]:
        assert clone.score_one(x) == model.score_one(x)
        clone.learn_one(x)
        model.learn_one(x)


def test_seeded_clones_agree(cls: type) -> None:
    _check(cls, "seeded_clones")
    a, b = _make(cls), _make(cls)
    for x in _stream(5):
        assert a.score_one(x) == b.score_one(x)
        a.learn_one(x)
        b.learn_one(x)


def test_missing_and_new_features_are_tolerated(cls: type) -> None:
    _check(cls, "missing_new_features")
    model = _make(cls)
    for i, x in enumerate(_stream(6)):
        x = dict(x)
        for key in sorted(x)[i % 3 :: 3]:
            del x[key]
        x[f"new_{i % 5}"] = float(i)
        assert 0.0 <= model.score_one(x) <= 1.0
        model.learn_one(x)
    assert 0.0 <= model.score_one({}) <= 1.0


def test_constructor_arguments_are_stored_under_their_names(cls: type) -> None:
    _check(cls, "params")
    params = cls._unit_test_params()
    model = cls(**params)
    for name, value in params.items():
        assert getattr(model, name) == value
    for p in inspect.signature(cls).parameters.values():
        assert hasattr(model, p.name), p.name
        assert not isinstance(p.default, list | dict | set), f"mutable default {p.name}"
