"""Online anomaly detectors over ended sessions: a fleet model and per-station baselines.

Rules name what they catch; these detectors score what rules do not name (DESIGN.md, "Fraud
detection"). They speak river's anomaly API: ``learn_one(x) -> None`` and ``score_one(x) ->
float`` on a feature dict (:data:`models.features.SESSION_FEATURES` plus the ``token_``
features), a high score means anomalous, and ``score_one`` never changes the model.

* :class:`FleetHalfSpaceTrees` - river's :class:`~river.anomaly.HalfSpaceTrees`, small
  (10 trees of height 8), over a few features with fixed, documented bounds (HST wants
  every feature in a known range). It pickles compactly: the trees' shape follows from the
  seed, so only their masses are stored.
* :class:`RobustBaseline` - median and MAD of a few features over their latest values;
  one per station plus one for the whole fleet (the partition), over the features that
  reveal a drifting meter (``energy_over_power_integral``: the register's energy over what
  its power samples add up to).
* :class:`OnlineScorer` - what one partition of the detection stage keeps: the fleet model,
  the fleet baseline and the baselines of the stations it sees. :meth:`OnlineScorer.observe`
  scores a session first, then learns from it, and raises an explained
  :class:`~topics.records.FraudAlert` (kind ``anomaly``) when the score passes a streaming
  quantile of the scores seen so far, after a warm-up. It serialises to a few tens of KB
  (:meth:`~OnlineScorer.to_bytes` / :meth:`~OnlineScorer.from_bytes`) for the changelog.

Pure: no I/O, no clock, randomness only from ``seed``.

Examples
--------
>>> import random
>>> rng = random.Random(1)
>>> base = RobustBaseline(features=("ratio",))
>>> for _ in range(50):
...     base.learn_one({"ratio": 1.0 + rng.gauss(0, 0.01)})
>>> base.score_one({"ratio": 1.0}) < 0.3 < 0.7 < base.score_one({"ratio": 1.18})
True
"""

from __future__ import annotations

import math
import pickle
import zlib
from array import array
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final, Literal

import msgspec
from river.anomaly import HalfSpaceTrees
from river.stats import Quantile
from river.tree.padded import make_padded_tree

from models.features import MODEL_INPUT_VERSION
from models.rules import _alert
from topics.identity import stable_id
from topics.records import FraudAlert, SessionFeatures

__all__ = [
    "FLEET_LIMITS",
    "FleetHalfSpaceTrees",
    "OnlineConfig",
    "OnlineScore",
    "OnlineScorer",
    "RobustBaseline",
]

_FORMAT: Final = 1
"""Version of :meth:`OnlineScorer.to_bytes`' layout (bumped when it changes)."""

_ALGORITHM: Final = 1
"""Version of the scoring code: part of :attr:`OnlineConfig.version`."""

_LOG_MASS_WARM_UP: Final = 8
"""Log-masses averaged before the fleet model's part scores."""

_LOG_MASS_ALPHA: Final = 0.001
"""Least weight of a new log-mass in its running mean (a plain mean for the first 1,000)."""
FLEET_LIMITS: Final[Mapping[str, tuple[float, float]]] = MappingProxyType(
    {
        "hours_from_0300": (0.0, 12.0),
        "token_night_share": (0.0, 1.0),
        "token_night_sessions": (0.0, 8.0),
        "energy_over_power_integral": (0.5, 1.5),
    }
)
"""Features of the fleet model and their bounds (values outside fall in the edge cells).

Time of day and the token's night habit (unusual hours) and the meter's energy over its
power samples (an inflating meter). Few on purpose: measured on simulator runs (seed 123),
half-space trees of height 8 lose the night sessions among six or ten features (PR-AUC 0.02
with ten); with ``hour_of_day`` instead of ``hours_from_0300`` the night sits mid-range and
the PR-AUC swings between 0.39 and 0.77 with the seed, with it 0.74-0.80."""


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# --------------------------------------------------------------------------- fleet model


class FleetHalfSpaceTrees:
    """Half-space trees over a few session features with fixed bounds.

    A thin layer over river's :class:`~river.anomaly.HalfSpaceTrees`: the trees are built
    over every feature of ``limits`` (not only those of the first event), features outside
    ``limits`` are ignored and missing ones follow river's rule (the heavier branch).
    ``score_one`` is in ``[0, 1]``, higher for sessions in sparsely populated regions of the
    reference window; 0 before ``min_reference`` sessions (nothing to compare with yet).

    :meth:`score_learn_one` is ``score_one`` then ``learn_one`` in one walk down each tree
    (the same result, half the work). Pickling stores the masses only and rebuilds the
    trees from ``seed`` (a ``seed`` of None pickles the trees whole).

    Parameters
    ----------
    limits
        Feature name -> ``(low, high)``; default :data:`FLEET_LIMITS`.
    n_trees, height, window_size
        As river's; a tree of height ``h`` has ``2 ** (h + 1) - 1`` nodes.
    min_reference
        In the first window, score against the sessions seen so far once there are this
        many (river scores 0 until the first window is complete).
    seed
        Seed of the trees' random splits.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(3)
    >>> model = FleetHalfSpaceTrees(limits={"a": (0.0, 1.0), "b": (0.0, 1.0)}, window_size=20,
    ...                             seed=3)
    >>> for _ in range(60):
    ...     model.learn_one({"a": rng.uniform(0.4, 0.6), "b": rng.uniform(0.4, 0.6)})
    >>> model.score_one({"a": 0.5, "b": 0.5}) < model.score_one({"a": 0.95, "b": 0.05})
    True
    """

    def __init__(
        self,
        limits: Mapping[str, tuple[float, float]] | None = None,
        *,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 128,
        min_reference: int = 32,
        seed: int | None = 0,
    ) -> None:
        self.limits = limits
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.min_reference = min_reference
        self.seed = seed
        self._build()

    @property
    def features(self) -> tuple[str, ...]:
        """The features the trees split on, sorted."""
        return self._features

    @property
    def warm(self) -> bool:
        """Scores mean something: a reference window is complete, or the first window has
        ``min_reference`` sessions (it then serves as the reference, scaled up)."""
        hst = self._hst
        return not hst._first_window or hst.counter >= self.min_reference

    def _build(self) -> None:
        limits = dict(FLEET_LIMITS if self.limits is None else self.limits)
        self._features = tuple(sorted(limits))
        self._hst = hst = HalfSpaceTrees(
            n_trees=self.n_trees,
            height=self.height,
            window_size=self.window_size,
            limits=limits,
            seed=self.seed,
        )
        hst.trees = [
            make_padded_tree(
                limits={f: limits[f] for f in self._features},
                height=self.height,
                padding=0.15,
                rng=hst.rng,
                r_mass=0,
                l_mass=0,
            )
            for _ in range(self.n_trees)
        ]
        hst._tree_nodes = [list(t.iter_dfs()) for t in hst.trees]
        self._max_score = hst._max_score

    def _project(self, x: Mapping[str, Any]) -> dict[str, float]:
        return {f: x[f] for f in self._features if f in x}

    def learn_one(self, x: Mapping[str, Any]) -> None:
        """Add ``x`` to the current window."""
        self._hst.learn_one(self._project(x))

    def score_one(self, x: Mapping[str, Any]) -> float:
        """Anomaly score of ``x`` in ``[0, 1]`` against the reference window (pure)."""
        return self._walk(self._project(x), learn=False)

    def score_learn_one(self, x: Mapping[str, Any]) -> float:
        """``score_one(x)`` then ``learn_one(x)``, in one walk down each tree."""
        score = self._walk(self._project(x), learn=True)
        self._pivot()
        return score

    def _walk(self, xs: dict[str, float], *, learn: bool) -> float:
        """River's scoring walk (mass x 2 ** depth, stopping at thin nodes), optionally
        counting ``xs`` on the way; in the first window the current masses, scaled to a
        window, stand in for the reference."""
        hst = self._hst
        height = hst.height
        size_limit = 0.1 * hst.window_size
        first = hst._first_window
        scoring = self.warm
        scale = hst.window_size / hst.counter if first and scoring else 1.0
        total = 0.0
        for root in hst.trees:
            node = root
            depth_pow = 1
            on = scoring
            for _ in range(height):
                if on:
                    r = node.l_mass * scale if first else node.r_mass
                    total += r * depth_pow
                    if r < size_limit:
                        on = False
                    depth_pow <<= 1
                if learn:
                    node.l_mass += 1
                elif not on:
                    break
                c = node.children
                value = xs.get(node.feature)
                if value is None:
                    node = c[1] if c[0].l_mass < c[1].l_mass else c[0]
                else:
                    node = c[0] if value < node.threshold else c[1]
            else:
                if on:
                    total += (node.l_mass * scale if first else node.r_mass) * depth_pow
                if learn:
                    node.l_mass += 1
        if not scoring:
            return 0.0
        return 1.0 - total / self._max_score

    def _pivot(self) -> None:
        hst = self._hst
        hst.counter += 1
        if hst.counter == hst.window_size:
            for nodes in hst._tree_nodes:
                for n in nodes:
                    n.r_mass = n.l_mass
                    n.l_mass = 0
            hst._first_window = False
            hst.counter = 0

    def isolation(self, x: Mapping[str, Any]) -> dict[str, float]:
        """Per feature, how much its splits on ``x``'s path thin out the reference mass.

        The mean over the trees of ``-log(share)`` summed over the splits on that feature,
        ``share`` being the part of a node's reference mass that goes ``x``'s way (pure; 0 for
        features never split on along the path).
        """
        xs = self._project(x)
        out = dict.fromkeys(self._features, 0.0)
        for root in self._hst.trees:
            node = root
            for _ in range(self.height):
                c = node.children
                value = xs.get(node.feature)
                if value is None:
                    nxt = c[1] if c[0].l_mass < c[1].l_mass else c[0]
                else:
                    nxt = c[0] if value < node.threshold else c[1]
                if node.r_mass > 0:
                    share = (nxt.r_mass + 0.5) / (node.r_mass + 1.0)
                    out[node.feature] -= math.log(min(1.0, share))
                node = nxt
        return {k: v / max(1, self.n_trees) for k, v in out.items()}

    def __getstate__(self) -> dict[str, Any]:
        hst = self._hst
        names = ("limits", "n_trees", "height", "window_size", "min_reference")
        params = {k: getattr(self, k) for k in names}
        state: dict[str, Any] = {
            "params": {**params, "limits": None if self.limits is None else dict(self.limits)},
            "seed": self.seed,
            "counter": hst.counter,
            "first_window": hst._first_window,
        }
        if self.seed is None:
            state["hst"] = hst
            return state
        wide = self.window_size + 1 > 0xFFFF
        masses = array("I" if wide else "H")
        for nodes in hst._tree_nodes:
            masses.extend([n.l_mass for n in nodes])
            masses.extend([n.r_mass for n in nodes])
        state["masses"] = masses.tobytes()
        state["typecode"] = masses.typecode
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        params = state["params"]
        self.limits = params["limits"]
        self.n_trees = params["n_trees"]
        self.height = params["height"]
        self.window_size = params["window_size"]
        self.min_reference = params["min_reference"]
        self.seed = state["seed"]
        if "hst" in state:
            self._build()
            self._hst = state["hst"]
            return
        self._build()
        hst = self._hst
        hst.counter = state["counter"]
        hst._first_window = state["first_window"]
        masses = array(state["typecode"])
        masses.frombytes(state["masses"])
        k = 0
        for nodes in hst._tree_nodes:
            n = len(nodes)
            for node, mass in zip(nodes, masses[k : k + n], strict=True):
                node.l_mass = mass
            for node, mass in zip(nodes, masses[k + n : k + 2 * n], strict=True):
                node.r_mass = mass
            k += 2 * n

    def __repr__(self) -> str:
        return (
            f"FleetHalfSpaceTrees(n_trees={self.n_trees}, height={self.height}, "
            f"window_size={self.window_size}, seed={self.seed})"
        )

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"window_size": 16, "height": 6, "n_trees": 4, "seed": 1}


# --------------------------------------------------------------------------- baselines


class RobustBaseline:
    """Running median and MAD of a few features over their latest values; the score is the
    worst z.

    For each feature the baseline keeps the latest ``window`` values (a ring of float32):
    the location is their median, the scale ``1.4826 x`` their median absolute deviation (the
    standard deviation for normal data), at least ``min_scale``. Both resist up to half the
    window being outliers (a meter that inflates a third of its sessions does not become its
    own baseline). A value of exactly 0.0 means "not measurable" (see
    :data:`models.features.SESSION_FEATURES`) and is skipped (unless ``zero_is_missing`` is
    False), as are missing features.

    ``score_one`` is ``z / (z + z_half)`` of the largest ``z = |x - location| / scale`` over
    the features: in ``[0, 1)``, 0.5 at ``z = z_half``, 0 until ``warm_up`` values of a
    feature were seen.

    Parameters
    ----------
    features
        The features followed.
    window
        Latest values kept per feature.
    min_scale
        Floor of the scale, in the features' units (meters are accurate to about 1 %).
    z_half
        The z that scores 0.5.
    warm_up
        Values of a feature needed before it scores.
    zero_is_missing
        Skip values of exactly 0.0 (features that use 0.0 for "not measurable").
    seed
        Unused (the baseline is deterministic); kept for river's API.

    Examples
    --------
    >>> b = RobustBaseline(features=("energy_over_power_integral",), warm_up=3)
    >>> for v in (1.0, 1.01, 0.99, 1.0, 1.15, 0.0):
    ...     b.learn_one({"energy_over_power_integral": v})
    >>> b.location("energy_over_power_integral"), b.count("energy_over_power_integral")
    (1.0, 5)
    >>> round(b.score_one({"energy_over_power_integral": 1.15}), 2)
    0.72
    """

    __slots__ = (
        "_rings",
        "features",
        "min_scale",
        "seed",
        "warm_up",
        "window",
        "z_half",
        "zero_is_missing",
    )

    def __init__(
        self,
        features: tuple[str, ...] = ("energy_over_power_integral",),
        *,
        window: int = 32,
        min_scale: float = 0.01,
        z_half: float = 4.0,
        warm_up: int = 8,
        zero_is_missing: bool = True,
        seed: int | None = None,
    ) -> None:
        self.features = features
        self.window = window
        self.min_scale = min_scale
        self.z_half = z_half
        self.warm_up = warm_up
        self.zero_is_missing = zero_is_missing
        self.seed = seed
        self._rings: dict[str, tuple[array[float], list[int]]] = {}
        """feature -> (latest values, [values learnt])."""

    def learn_one(self, x: Mapping[str, Any]) -> None:
        """Add the followed features of ``x`` to their windows."""
        for name in self.features:
            value = x.get(name)
            if value is None or (self.zero_is_missing and value == 0.0):
                continue
            ring = self._rings.get(name)
            if ring is None:
                ring = self._rings[name] = (array("f"), [0])
            values, count = ring
            if len(values) < self.window:
                values.append(value)
            else:
                values[count[0] % self.window] = value
            count[0] += 1

    def _stats(self, name: str) -> tuple[float, float] | None:
        ring = self._rings.get(name)
        if ring is None:
            return None
        ordered = sorted(ring[0])
        n = len(ordered)
        mid = n // 2
        med = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        dev = sorted(abs(v - med) for v in ordered)
        mad = dev[mid] if n % 2 else (dev[mid - 1] + dev[mid]) / 2
        return med, max(1.4826 * mad, self.min_scale)

    def z_scores(self, x: Mapping[str, Any]) -> dict[str, float]:
        """Signed z of every followed feature of ``x`` that has a baseline (pure)."""
        out = {}
        for name in self.features:
            value = x.get(name)
            if value is None or (self.zero_is_missing and value == 0.0):
                continue
            if self.count(name) < self.warm_up:
                continue
            stats = self._stats(name)
            if stats is not None:
                out[name] = (value - stats[0]) / stats[1]
        return out

    def score_one(self, x: Mapping[str, Any]) -> float:
        """``z / (z + z_half)`` of the largest ``|z|`` (0 with no baseline yet; pure)."""
        z = max((abs(v) for v in self.z_scores(x).values()), default=0.0)
        return z / (z + self.z_half)

    def location(self, name: str) -> float | None:
        """Median of the latest values of ``name`` (None before its first value)."""
        stats = self._stats(name)
        return None if stats is None else round(stats[0], 6)

    def scale(self, name: str) -> float | None:
        """Scale of ``name`` (``1.4826 x MAD``, at least ``min_scale``; None before any)."""
        stats = self._stats(name)
        return None if stats is None else round(stats[1], 6)

    def count(self, name: str) -> int:
        """Values of ``name`` learnt."""
        ring = self._rings.get(name)
        return 0 if ring is None else ring[1][0]

    def __getstate__(self) -> tuple[Any, ...]:
        params = (self.features, self.window, self.min_scale, self.z_half, self.warm_up)
        rings = {k: (v.tobytes(), c[0]) for k, (v, c) in self._rings.items()}
        return (*params, self.zero_is_missing, self.seed, rings)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.features, self.window, self.min_scale, self.z_half, self.warm_up,
         self.zero_is_missing, self.seed, rings) = state  # fmt: skip
        self._rings = {}
        for name, (raw, count) in rings.items():
            values = array("f")
            values.frombytes(raw)
            self._rings[name] = (values, [count])

    def __repr__(self) -> str:
        return f"RobustBaseline(features={self.features!r}, window={self.window})"

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"features": ("a", "b"), "warm_up": 3, "window": 16}


# --------------------------------------------------------------------------- the scorer


@dataclass(frozen=True, slots=True)
class OnlineConfig:
    """Settings of :class:`OnlineScorer` (defaults measured on simulator runs, see README).

    Parameters
    ----------
    n_trees, height, window_size, min_reference, seed
        The fleet model's (:class:`FleetHalfSpaceTrees`); DESIGN.md keeps HST small.
    fleet_limits
        The fleet model's features as ``(name, low, high)``; default :data:`FLEET_LIMITS`.
    quantile
        The fleet model's alert threshold is this streaming quantile of all its scores so
        far (night charging is rare in the simulator, common in residential garages: the
        threshold follows the fleet it watches).
    warm_up
        Sessions scored before any alert (the quantile and the baselines settle).
    min_threshold
        Floor of the fleet model's threshold (a quiet stream must not alert on its own
        noise), and the meter baselines' threshold: their part is a robust z-score mapped to
        ``z / (z + z_half)``, 0.55 is ``z`` of about 4.9 with the default ``z_half``.
    meter_features
        What the station and fleet baselines follow.
    baseline_warm_up, z_half
        The baselines' (:class:`RobustBaseline`).
    hst_z_half, hst_scale
        The fleet model's part is ``z / (z + hst_z_half)`` with ``z`` how far the log of its
        mass lies below the running mean of the log-masses, in units of ``hst_scale`` (3: a
        factor of 20 in mass).
    fleet_window, station_window
        Latest values the fleet's and each station's :class:`RobustBaseline` keep.
    remember_sessions
        Session ids remembered so that a republished session is scored but not learnt twice.

    Examples
    --------
    >>> OnlineConfig().version
    'online-v2.1-...'
    >>> OnlineConfig(quantile=0.99).version == OnlineConfig().version
    False
    """

    n_trees: int = 10
    height: int = 8
    window_size: int = 128
    min_reference: int = 16
    seed: int = 7
    fleet_limits: tuple[tuple[str, float, float], ...] = tuple(
        (name, lo, hi) for name, (lo, hi) in FLEET_LIMITS.items()
    )
    quantile: float = 0.998
    warm_up: int = 150
    min_threshold: float = 0.55
    meter_features: tuple[str, ...] = ("energy_over_power_integral",)
    baseline_warm_up: int = 8
    z_half: float = 4.0
    hst_z_half: float = 1.0
    hst_scale: float = 3.0
    fleet_window: int = 128
    station_window: int = 32
    remember_sessions: int = 512

    @property
    def version(self) -> str:
        """Model version: input version, algorithm and a digest of these settings."""
        digest = stable_id("online-config", *sorted(asdict(self).items()))[:8]
        return f"online-v{MODEL_INPUT_VERSION}.{_ALGORITHM}-{digest}"


class OnlineScore(msgspec.Struct, frozen=True, kw_only=True):
    """One session's online score, as ``voltguard replay`` writes it to ``scores.jsonl``.

    Examples
    --------
    >>> from datetime import UTC, datetime
    >>> s = OnlineScore(session_id="s1", station_id="CP1", token_hash=None,
    ...     event_time=datetime(2024, 5, 6, tzinfo=UTC), score=0.7, threshold=0.55,
    ...     detector="station-baseline", model_version="online-v2.1-x",
    ...     parts={"river-hst": 0.1, "station-baseline": 0.7})
    >>> msgspec.json.encode(s)[:62]
    b'{"session_id":"s1","station_id":"CP1","token_hash":null,"event'
    """

    session_id: str
    station_id: str
    token_hash: str | None
    event_time: datetime
    """When the session ended (the features' event time)."""
    score: float
    """The largest part, in ``[0, 1]``."""
    threshold: float | None
    """The alert threshold when the score was given (None during the warm-up)."""
    detector: str
    """The part that gave the score (``river-hst`` or ``station-baseline``)."""
    model_version: str
    parts: dict[str, float]
    """Every part's score (each in ``[0, 1)``)."""


def _num(value: object) -> str:
    """A value for an explanation: two decimals, or ``-`` when there is none yet."""
    return f"{value:.2f}" if isinstance(value, int | float) else "-"


class OnlineScorer:
    """The online detectors of one partition: fleet model, fleet and station baselines.

    :meth:`observe` scores a session's features (merged with its token features), then
    learns from them (score-then-learn: a session never scores against itself). Its score
    is the larger of two parts, each ``z / (z + z_half)`` in ``[0, 1)``; calibrated so, the
    parts compare (an HST score itself crowds near 1 and would swamp the other part):

    * ``river-hst``: ``z`` is how far the log of the :class:`FleetHalfSpaceTrees` mass
      (``1 - score_one``) lies below the running mean of the log-masses, in units of
      ``hst_scale``; 0 until the model has a reference;
    * ``station-baseline``: the larger of the fleet's and the station's
      :class:`RobustBaseline` ``z`` on the meter features, over-reporting only (when many
      sessions of a station or partition inflate, the honest ones fall below the baseline;
      an under-reading meter costs the operator, and reconciliation shows it).

    After ``warm_up`` sessions a part above its threshold raises an ``anomaly`` alert that
    names the part, the features, their values and baselines, the threshold and the model
    version. The fleet model's threshold is the ``quantile`` of all its scores so far (at
    least ``min_threshold``), so it follows what is usual in the fleet it watches; the meter
    part's is ``min_threshold`` itself, a robust z-score, because a meter that keeps
    inflating must not raise its own bar. A session seen again (features are republished
    when payments follow) is scored again but not learnt twice.

    An alert's severity says how far over the threshold the score is, as the share
    ``(score - threshold) / (1 - threshold)``: under 0.2 ``info``, under 0.5 ``warning``,
    else ``error`` (never ``critical``: a statistical alert goes to Slack, not the pager).
    Its id is the rules' (:func:`models.rules._alert`: kind ``anomaly``, the session), so a
    replay or a redelivery gives the same id.

    Parameters
    ----------
    config
        Settings; default :class:`OnlineConfig`.

    Examples
    --------
    >>> from datetime import UTC, datetime
    >>> from topics.records import SessionFeatures
    >>> import random
    >>> rng = random.Random(5)
    >>> scorer = OnlineScorer(OnlineConfig(warm_up=20, window_size=16))
    >>> def session(i, ratio):
    ...     return SessionFeatures(event_id=f"e{i}", event_time=datetime(2024, 5, 6, tzinfo=UTC),
    ...         source="x", session_id=f"s{i}", station_id="CP12",
    ...         features={"energy_over_power_integral": ratio, "hour_of_day": 14.0,
    ...                   "energy_kwh": 20.0})
    >>> for i in range(40):
    ...     _ = scorer.observe(session(i, 1.0 + rng.gauss(0, 0.005)), {})
    >>> score, alerts = scorer.observe(session(99, 1.18), {})
    >>> [(a.kind, a.detector, a.severity) for a in alerts]
    [('anomaly', 'station-baseline', 'error')]
    >>> print(alerts[0].explanation)
    energy reported by CP12's meter is 1.18x what its power samples add up to (station median 1.00, fleet 1.00)
    >>> OnlineScorer.from_bytes(scorer.to_bytes()).sessions_seen
    41
    """

    def __init__(self, config: OnlineConfig | None = None) -> None:
        self.config = cfg = config or OnlineConfig()
        self.model_version = cfg.version
        self.fleet_model = FleetHalfSpaceTrees(
            {name: (lo, hi) for name, lo, hi in cfg.fleet_limits},
            n_trees=cfg.n_trees,
            height=cfg.height,
            window_size=cfg.window_size,
            min_reference=cfg.min_reference,
            seed=cfg.seed,
        )
        self.log_mass = [0, 0.0]
        """Count and running mean of the log of the fleet model's mass (``1 - score``)."""
        self.fleet = self._baseline(cfg.fleet_window)
        self.profile = RobustBaseline(
            self.fleet_model.features, window=cfg.fleet_window, zero_is_missing=False
        )
        """The fleet model's features (their medians, for explanations)."""
        self.stations: dict[str, RobustBaseline] = {}
        self.threshold_quantile = Quantile(cfg.quantile)
        self.sessions_seen = 0
        self.alerts_raised = 0
        self._recent: deque[int] = deque(maxlen=cfg.remember_sessions)
        self._recent_set: set[int] = set()

    def _baseline(self, window: int) -> RobustBaseline:
        cfg = self.config
        return RobustBaseline(
            cfg.meter_features,
            window=window,
            warm_up=cfg.baseline_warm_up,
            z_half=cfg.z_half,
        )

    # ------------------------------------------------------------------ scoring

    @property
    def threshold(self) -> float | None:
        """The fleet model's current alert threshold (None during the warm-up)."""
        if self.sessions_seen < self.config.warm_up:
            return None
        q = self.threshold_quantile.get()
        return max(self.config.min_threshold, q if q is not None else 1.0)

    def _threshold_of(self, part: str) -> float | None:
        if self.sessions_seen < self.config.warm_up:
            return None
        return self.threshold if part == "river-hst" else self.config.min_threshold

    def observe(
        self, f: SessionFeatures, token_features: Mapping[str, float] | None = None
    ) -> tuple[float, list[FraudAlert]]:
        """Score ``f`` (plus its token features), then learn from it: ``(score, alerts)``."""
        scored, alerts = self.observe_scored(f, token_features)
        return scored.score, alerts

    def observe_scored(
        self, f: SessionFeatures, token_features: Mapping[str, float] | None = None
    ) -> tuple[OnlineScore, list[FraudAlert]]:
        """:meth:`observe` with the whole :class:`OnlineScore`."""
        x: Mapping[str, float] = f.features
        if token_features:
            x = {**f.features, **token_features}
        key = zlib.crc32(f.session_id.encode())
        seen = key in self._recent_set
        station = self.stations.get(f.station_id)
        warm = self.fleet_model.warm
        raw = self.fleet_model.score_one(x) if seen else self.fleet_model.score_learn_one(x)
        log_mass = math.log(max(1e-12, 1.0 - raw)) if warm else None
        hst = 0.0
        if log_mass is not None and self.log_mass[0] >= _LOG_MASS_WARM_UP:
            z = max(0.0, (self.log_mass[1] - log_mass) / self.config.hst_scale)
            hst = z / (z + self.config.hst_z_half)
        meter, z_station, z_fleet = self._meter_part(x, station)
        if meter > hst:
            score, part = meter, "station-baseline"
        else:
            score, part = hst, "river-hst"
        threshold = self._threshold_of(part)
        scored = OnlineScore(
            session_id=f.session_id,
            station_id=f.station_id,
            token_hash=f.token_hash,
            event_time=f.event_time,
            score=score,
            threshold=threshold,
            detector=part,
            parts={"river-hst": hst, "station-baseline": meter},
            model_version=self.model_version,
        )
        alerts: list[FraudAlert] = []
        if threshold is not None and score > threshold:
            alerts.append(self._explain(f, x, scored, threshold, station, z_station, z_fleet))
        if not seen:
            self._remember(key)
            self.sessions_seen += 1
            if log_mass is not None:
                self.threshold_quantile.update(hst)
            if log_mass is not None:
                n = self.log_mass[0] = self.log_mass[0] + 1
                self.log_mass[1] += (log_mass - self.log_mass[1]) * max(1.0 / n, _LOG_MASS_ALPHA)
            self.fleet.learn_one(x)
            self.profile.learn_one(x)
            if station is None:
                station = self.stations[f.station_id] = self._baseline(self.config.station_window)
            station.learn_one(x)
        self.alerts_raised += len(alerts)
        return scored, alerts

    def _meter_part(
        self, x: Mapping[str, float], station: RobustBaseline | None
    ) -> tuple[float, dict[str, float], dict[str, float]]:
        z_fleet = self.fleet.z_scores(x)
        z_station = station.z_scores(x) if station is not None else {}
        # Over-reporting only: a session below a baseline that inflating sessions pulled
        # up is not suspicious (and under-reading meters cost the operator, not the driver).
        z = max((v for v in (*z_fleet.values(), *z_station.values())), default=0.0)
        return max(0.0, z) / (max(0.0, z) + self.config.z_half), z_station, z_fleet

    def _remember(self, key: int) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(key)
        self._recent_set.add(key)

    # ------------------------------------------------------------------ explanations

    def _explain(
        self,
        f: SessionFeatures,
        x: Mapping[str, float],
        scored: OnlineScore,
        threshold: float,
        station: RobustBaseline | None,
        z_station: dict[str, float],
        z_fleet: dict[str, float],
    ) -> FraudAlert:
        margin = (scored.score - threshold) / max(1e-9, 1.0 - threshold)
        severity: Literal["info", "warning", "error"] = (
            "error" if margin >= 0.5 else "warning" if margin >= 0.2 else "info"
        )
        sid, sta = f.session_id, f.station_id
        top: list[dict[str, object]] = []
        if scored.detector == "station-baseline":
            names = sorted(
                set(z_station) | set(z_fleet),
                key=lambda n: (-max(abs(z_station.get(n, 0.0)), abs(z_fleet.get(n, 0.0))), n),
            )
            for name in names[:3]:
                top.append({
                    "feature": name,
                    "value": _round(x.get(name)),
                    "station_median": station.location(name) if station else None,
                    "station_scale": station.scale(name) if station else None,
                    "station_z": _round(z_station.get(name)),
                    "fleet_median": self.fleet.location(name),
                    "fleet_scale": self.fleet.scale(name),
                    "fleet_z": _round(z_fleet.get(name)),
                })  # fmt: skip
            first = top[0]
            if first["feature"] == "energy_over_power_integral":
                st = first["station_median"]
                text = (
                    f"energy reported by {sta}'s meter is {x.get('energy_over_power_integral', 0):.2f}x "
                    f"what its power samples add up to (station median "
                    f"{'-' if st is None else f'{st:.2f}'}, fleet {self.fleet.location(first['feature']) or 0:.2f})"
                )  # fmt: skip
            else:
                text = (
                    f"{first['feature']} of session {sid} at {sta} is {first['value']} "
                    f"(station median {first['station_median']}, fleet {first['fleet_median']})"
                )
        else:
            top = self._hst_features(x)
            listed = ", ".join(
                f"{t['feature']} {_num(t['value'])} (fleet median {_num(t['fleet_median'])})"
                for t in top
            )
            hour = x.get("hour_of_day")
            when = (
                "" if hour is None else f" (started {int(hour):02d}:{int(hour % 1 * 60):02d} local)"
            )
            text = (
                f"session {sid} at {sta}{when} is unlike the fleet's recent sessions "
                f"(score {scored.score:.3f} > {threshold:.3f}): {listed}"
            )
        alert = _alert(
            "anomaly",
            severity,
            scored.score,
            subject_type="session",
            subject_id=sid,
            about=(sid,),
            at=f.event_time,
            explanation=text,
            evidence={
                "detector": scored.detector,
                "score": round(scored.score, 4),
                "parts": {k: round(v, 4) for k, v in scored.parts.items()},
                "threshold": round(threshold, 4),
                "quantile": self.config.quantile,
                "sessions_seen": self.sessions_seen,
                "top_features": top,
                "token_hash": f.token_hash,
            },
            event_ids=f.evidence_event_ids,
            session_id=sid,
            station_id=sta,
        )
        return msgspec.structs.replace(
            alert,
            source="voltguard-online",
            detector=scored.detector,
            model_version=self.model_version,
        )

    def _hst_features(self, x: Mapping[str, float]) -> list[dict[str, object]]:
        """The fleet model's features that isolate ``x`` most, with the fleet's medians.

        HST has no attribution of its own: along ``x``'s path in each tree, every split
        keeps a share of the reference window's mass; a feature's weight is the mean over
        the trees of ``-log(share)`` summed over its splits (the features whose splits left
        ``x`` alone).
        """
        weights = self.fleet_model.isolation(x)
        ranked = sorted(weights, key=lambda n: (-weights[n], n))
        return [
            {
                "feature": name,
                "value": _round(x.get(name)),
                "fleet_median": self.profile.location(name),
                "fleet_scale": self.profile.scale(name),
                "isolation": round(weights[name], 3),
            }
            for name in ranked[:3]
            if weights[name] > 0
        ]

    # ------------------------------------------------------------------ checkpoints

    def to_bytes(self) -> bytes:
        """The whole scorer as bytes (pickle), for a changelog; see :meth:`from_bytes`."""
        return pickle.dumps((_FORMAT, self), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, data: bytes) -> OnlineScorer:
        """A scorer from :meth:`to_bytes` (raises ValueError on another format)."""
        fmt, scorer = pickle.loads(data)  # our own checkpoint topic: trusted bytes
        if fmt != _FORMAT or not isinstance(scorer, cls):
            raise ValueError(f"not an OnlineScorer checkpoint of format {_FORMAT}")
        return scorer

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_recent"] = array("I", self._recent).tobytes()
        del state["_recent_set"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        recent = array("I")
        recent.frombytes(state.pop("_recent"))
        self.__dict__.update(state)
        self._recent = deque(recent, maxlen=self.config.remember_sessions)
        self._recent_set = set(self._recent)

    def __repr__(self) -> str:
        return (
            f"OnlineScorer(sessions_seen={self.sessions_seen}, stations={len(self.stations)}, "
            f"model_version={self.model_version!r})"
        )
