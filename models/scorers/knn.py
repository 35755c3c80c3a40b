"""Fast exact k-nearest-neighbour learner and a kNN-based importance scorer.

river's :class:`river.neighbors.KNNClassifier` searches a window of Python dicts
one example at a time, which costs hundreds of microseconds per event for a window
of 1000.  :class:`FastKNNClassifier` keeps river's estimator protocol
(``learn_one`` / ``predict_proba_one`` / ``predict_one`` on dicts) but stores the
window in a preallocated float32 ring buffer and answers a query with one
matrix-vector product plus :func:`numpy.argpartition`, so a predict + learn pair
costs a few tens of microseconds.  Hot-path callers that already hold a numpy
vector should use the ``*_vec`` methods, which skip the dict conversion.

:class:`KNNImportance` turns the neighbourhood of an embedding into a sample
importance score in ``[0, 1]`` that blends *novelty* (is the event far from what
the window has seen?) and *disagreement* (do its neighbours disagree about the
label?).

Both classes serialise to plain JSON-safe dicts (``to_state`` / ``from_state``);
arrays are encoded by :func:`models.state.encode_array` (base64 of their little-endian
bytes, dtype and shape).  Pickle is never used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

import numpy as np
from river import base

from models.state import StateError, decode_array, encode_array

__all__ = ["FastKNNClassifier", "KNNImportance"]

# Extra candidates taken from the approximate (float32, norm-expansion) ranking
# before the exact float64 re-ranking.  The expansion ``||x||² - 2 x·q`` loses a
# few ulps of precision relative to ``||x||²``; the candidates are re-ranked with
# exact distances, and a rounding-error bound certifies that no point outside the
# candidate set can be closer than the k-th neighbour.  When the bound cannot
# certify it (exact ties at the boundary, or vectors with a large common offset
# compared with their spread) the search falls back to exact distances over the
# whole window, so the result is always exact.
_MARGIN = 8
_F32_EPS = float(np.finfo(np.float32).eps)

#: layout of a :class:`KNNImportance` state
_STATE_VERSION = 1
#: layout of a :class:`FastKNNClassifier` state. 2: arrays as
#: :func:`models.state.encode_array` writes them; 1 (still read): ``{"dtype": "<f4",
#: "shape", "data"}``
_CLASSIFIER_STATE_VERSION = 2
_V1_DTYPES = {"<f4": "float32", "|u1": "uint8", "<i8": "int64"}
#: operations searched together by :meth:`KNNImportance.run` (bounds its score matrix)
_CHUNK = 256
#: fewer operations than this are searched one by one by :meth:`KNNImportance.run`
_BATCH_MIN = 8
#: columns per group whose minima bound the candidates in :func:`batch_assess`
_GROUP = 32


# ---------------------------------------------------------------------------
# arrays of the state
# ---------------------------------------------------------------------------


def _decode_array(obj: Any, dtype: str, version: int) -> np.ndarray:
    """:func:`models.state.decode_array` of ``obj``, which must hold ``dtype`` (a version 1
    state's array is read through its earlier key names)."""
    if version == 1 and isinstance(obj, Mapping):
        tag = obj.get("dtype")
        obj = {"dtype": _V1_DTYPES.get(tag, tag), "shape": obj.get("shape"), "b64": obj.get("data")}
    array = decode_array(obj)
    if array.dtype.name != dtype:
        raise StateError(f"expected an array of dtype {dtype!r}, got {array.dtype.name!r}")
    return array


def _sorted_keys(x: Mapping[Any, Any]) -> tuple:
    try:
        return tuple(sorted(x))
    except TypeError:  # mixed, unorderable key types
        return tuple(sorted(x, key=repr))


def _check_json_feature_names(names: Sequence[Any] | None) -> list | None:
    if names is None:
        return None
    for name in names:
        if not isinstance(name, (str, int)) or isinstance(name, bool):
            raise TypeError(
                f"feature name {name!r} is not JSON-safe; only str and int names can be saved"
            )
    return list(names)


# ---------------------------------------------------------------------------
# Classifier
# ---------------------------------------------------------------------------


class FastKNNClassifier(base.Classifier):
    """Exact binary k-NN classifier over a sliding window, with a numpy search engine.

    The last ``window_size`` labelled examples are kept in a preallocated float32
    ring buffer ``(window_size, d)`` together with their squared norms, labels and
    insertion ids.  A query computes ``||X||² - 2 X·q`` for the filled part of the
    window in one matrix-vector product, keeps the ``n_neighbors + 8`` best
    candidates with :func:`numpy.argpartition`, and re-ranks those by their exact
    float64 Euclidean distance (ties broken by age, oldest first, as river's
    ``LazySearch`` does).  A float32 rounding-error bound checks that no point
    outside the candidates can be closer; when it cannot (exact distance ties at
    the k-th place, or vectors with a large common offset compared with their
    spread) the query falls back to exact distances over the whole window, so the
    search is always exact.  ``learn_one`` overwrites one row, i.e. it is O(d).

    Probabilities are the (optionally inverse-distance weighted) mean of the
    neighbours' labels, shrunk towards 0.5 by a Laplace-style prior::

        P(True) = (sum_i w_i * y_i + prior) / (sum_i w_i + 2 * prior)

    where the weights are rescaled to sum to the number of neighbours found, so
    ``prior`` acts as a pseudo-count that does not depend on the distance scale.
    An empty window therefore predicts 0.5.  In weighted mode, when some
    neighbours coincide exactly with the query (distance 0), those neighbours share
    the whole vote.  With ``prior=0`` and no exact match, the probabilities equal
    those of river's ``KNNClassifier`` with the same ``weighted`` setting (on an
    exact match river lets the oldest coinciding neighbour alone decide, in both
    modes).

    Parameters
    ----------
    n_neighbors
        Number of neighbours that vote.
    window_size
        Number of most recent labelled examples kept; older ones are evicted first.
    features
        Dense feature order used to turn dicts into vectors.  If None, it is fixed
        from the sorted keys of the first dict passed to ``learn_one``.  Keys
        missing from a dict count as 0; keys not in the feature list are ignored.
        Pure-vector users (``learn_vec``) can leave it None: the dimension is then
        fixed by the first learnt vector.
    weighted
        Weight each neighbour's vote by the inverse of its distance.
    prior
        Pseudo-count added to each class (Laplace-style smoothing); must be >= 0.

    Notes
    -----
    Labels must be binary (``False``/``True`` or ``0``/``1``).  Feature values and
    vectors must be finite and have a finite float32 squared norm; anything else
    raises ``ValueError`` rather than silently poisoning the window.

    Examples
    --------
    >>> clf = FastKNNClassifier(n_neighbors=3, window_size=100)
    >>> clf.predict_proba_one({"a": 0.0, "b": 0.0})
    {False: 0.5, True: 0.5}
    >>> for i in range(10):
    ...     clf.learn_one({"a": float(i), "b": 0.0}, i >= 5)
    >>> clf.predict_one({"a": 8.5, "b": 0.0})
    True
    >>> proba = clf.predict_proba_one({"a": 8.5, "b": 0.0})
    >>> {label: round(p, 6) for label, p in proba.items()}
    {False: 0.2, True: 0.8}
    >>> distances, labels = clf.neighbours_one({"a": 8.5, "b": 0.0})
    >>> distances.tolist(), labels.tolist()
    ([0.5, 0.5, 1.5], [True, True, True])

    It plugs into river's tooling like any other classifier:

    >>> from river import datasets, evaluate, metrics, preprocessing
    >>> model = preprocessing.StandardScaler() | FastKNNClassifier(n_neighbors=5)
    >>> evaluate.progressive_val_score(datasets.Phishing(), model, metrics.Accuracy())
    Accuracy: 88.08%

    The state is plain JSON-safe data:

    >>> import json
    >>> clone = FastKNNClassifier.from_state(json.loads(json.dumps(clf.to_state())))
    >>> clone.predict_proba_one({"a": 8.5, "b": 0.0}) == proba
    True

    """

    def __init__(
        self,
        n_neighbors: int = 10,
        window_size: int = 1000,
        features: Sequence[Any] | None = None,
        weighted: bool = True,
        prior: float = 1.0,
    ):
        if int(n_neighbors) < 1:
            raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")
        if int(window_size) < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        if not (math.isfinite(prior) and prior >= 0):
            raise ValueError(f"prior must be finite and >= 0, got {prior}")
        if isinstance(features, (str, bytes)):
            raise TypeError("features must be a sequence of feature names, not a string")
        self.n_neighbors = int(n_neighbors)
        self.window_size = int(window_size)
        self.features = tuple(features) if features is not None else None
        self.weighted = bool(weighted)
        self.prior = float(prior)

        self._feats: tuple | None = None
        self._getter: itemgetter | None = None
        self._d: int | None = None
        self._X: np.ndarray | None = None  # (window_size, d) float32 ring buffer
        self._X64: np.ndarray | None = None  # the same rows as float64 (exact re-ranking)
        self._Xm2: np.ndarray | None = None  # the same rows times -2 (float32, exact)
        self._sq: np.ndarray | None = None  # (window_size,) float32 squared norms
        self._y: np.ndarray | None = None  # (window_size,) float64 labels in {0, 1}
        self._ids: np.ndarray | None = None  # (window_size,) int64 insertion ids
        self._scratch: np.ndarray | None = None  # (window_size,) float32 search scores
        self._pos = 0  # next slot to write
        self._n = 0  # number of filled slots
        self._n_seen = 0  # number of examples ever learnt
        self._sq_max = 0.0  # max squared norm ever stored (for the rounding bound)
        if self.features is not None:
            self._set_features(self.features)
            self._allocate(len(self.features))

    # -- river plumbing -----------------------------------------------------------------

    @classmethod
    def _unit_test_params(cls):
        yield {"n_neighbors": 3, "window_size": 30}
        yield {"n_neighbors": 5, "window_size": 50, "weighted": False, "prior": 0.0}

    # -- introspection ------------------------------------------------------------------

    @property
    def feature_names(self) -> tuple | None:
        """The dense feature order in use (None until fixed)."""
        return self._feats

    @property
    def n_features(self) -> int | None:
        """Vector dimension (None until fixed by ``features`` or the first example)."""
        return self._d

    @property
    def n_stored(self) -> int:
        """Number of examples currently in the window (at most ``window_size``)."""
        return self._n

    @property
    def n_seen(self) -> int:
        """Number of examples learnt since creation (including evicted ones)."""
        return self._n_seen

    # -- internals ----------------------------------------------------------------------

    def _set_features(self, feats: tuple) -> None:
        self._feats = feats
        # itemgetter with a single key returns a scalar, not a tuple.
        self._getter = itemgetter(*feats) if len(feats) > 1 else None

    def _allocate(self, d: int) -> None:
        w = self.window_size
        self._d = d
        self._X = np.zeros((w, d), dtype=np.float32)
        self._X64 = np.zeros((w, d), dtype=np.float64)
        self._Xm2 = np.zeros((w, d), dtype=np.float32)
        self._sq = np.zeros(w, dtype=np.float32)
        self._y = np.zeros(w, dtype=np.float64)
        self._ids = np.full(w, -1, dtype=np.int64)
        self._scratch = np.empty(w, dtype=np.float32)

    def _dict_to_vec(self, x: Mapping[Any, Any], fix: bool) -> np.ndarray | None:
        """Convert a feature dict to a float32 vector (None if the order is still unknown)."""
        feats = self._feats
        if feats is None:
            if not fix:
                return None
            feats = _sorted_keys(x)
            if self._d is not None and len(feats) != self._d:
                raise ValueError(
                    f"the window holds {self._d}-dimensional vectors but the first dict has "
                    f"{len(feats)} features; pass `features=` explicitly"
                )
            self._set_features(feats)
        getter = self._getter
        if getter is not None:
            try:
                return np.array(getter(x), dtype=np.float32)
            except KeyError:
                pass
        return np.array([x.get(f, 0.0) for f in feats], dtype=np.float32)

    def _query(self, vec: Any) -> tuple[np.ndarray, float]:
        """Validate a vector; return it as contiguous float32 with its squared norm."""
        q = np.ascontiguousarray(vec, dtype=np.float32)
        if q.ndim != 1:
            raise ValueError(f"expected a 1-d vector, got shape {q.shape}")
        if self._d is not None and q.shape[0] != self._d:
            raise ValueError(f"expected a vector of length {self._d}, got {q.shape[0]}")
        sq = float(q @ q)
        if not math.isfinite(sq):
            raise ValueError("vector has non-finite values (or its float32 squared norm overflows)")
        return q, sq

    def _search(self, q: np.ndarray, qq: float) -> tuple[np.ndarray, np.ndarray]:
        """Return (slots, distances) of the k nearest stored rows, nearest first.

        ``qq`` is the squared norm of ``q``.  Ties are broken by age (oldest first).
        """
        n = self._n
        if n == 0:
            return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.float64)
        k = min(self.n_neighbors, n)
        m = min(n, k + _MARGIN)
        if m == n:
            slots, d2 = self._rank_exact(np.arange(n), q, k)
            return slots, np.sqrt(d2)
        # the filled part is always the first n rows of the ring; (-2X)·q is exactly
        # -2(X·q) (a power of two), so the scores are ||x||² - 2 x·q as before
        scores = self._scratch[:n]
        np.matmul(self._Xm2[:n], q, out=scores)
        scores += self._sq[:n]
        # the candidates: every row whose score is at most the m-th smallest (m rows, or
        # more on ties; a partition of the values and a comparison cost less than
        # argpartition)
        bound = float(np.partition(scores, m - 1)[m - 1])
        cand = np.flatnonzero(scores <= bound)
        slots, d2 = self._rank_exact(cand, q, k)
        # Every row outside `cand` has an approximate score > the largest candidate
        # score; its true squared distance is at least that minus the rounding error.
        # Certify that this lower bound exceeds the k-th exact squared distance.
        sq_max = self._sq_max
        err = (q.shape[0] + 2) * 2.0 * _F32_EPS * (sq_max + 2.0 * math.sqrt(sq_max * qq) + qq)
        if bound + qq - err > d2[-1]:
            return slots, np.sqrt(d2)
        slots, d2 = self._rank_exact(np.arange(n), q, k)
        return slots, np.sqrt(d2)

    def _rank_exact(self, cand: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact float64 squared distances for ``cand``; return the k best (slots, d²)."""
        diff = self._X64[cand]  # a copy (fancy indexing)
        diff -= q
        d2 = np.einsum("ij,ij->i", diff, diff)
        if k < cand.shape[0] and cand.shape[0] > 64:
            # Large pool (full fallback): keep everything tied with the k-th distance
            # so that the age tie-break below sees all of them.
            kth = np.partition(d2, k - 1)[k - 1]
            keep = np.flatnonzero(d2 <= kth)
            cand, d2 = cand[keep], d2[keep]
        order = np.lexsort((self._ids[cand], d2))[:k]
        return cand[order], d2[order]

    def _positive_mass(self, dist: np.ndarray, labels: np.ndarray) -> float:
        """Sum of positive votes, with weights rescaled to sum to ``len(dist)`` (> 0)."""
        if not self.weighted:
            return float(labels.sum())
        # `dist` is sorted ascending, so an exact match shows up in position 0.
        w = (dist == 0.0).astype(np.float64) if dist[0] == 0.0 else 1.0 / dist
        return dist.shape[0] * float(w @ labels) / float(w.sum())

    def _proba_true(self, dist: np.ndarray, labels: np.ndarray) -> float:
        n = dist.shape[0]
        a = self.prior
        if n == 0 or (n + 2.0 * a) == 0.0:
            return 0.5
        return (self._positive_mass(dist, labels) + a) / (n + 2.0 * a)

    # -- vector API (hot path) ----------------------------------------------------------

    def learn_vec(self, vec: np.ndarray, y: bool | int) -> None:
        """Add one labelled vector to the window, evicting the oldest if it is full. O(d).

        ``vec`` is copied into the ring buffer, so the caller may reuse it.
        """
        if y not in (0, 1):
            raise ValueError(f"labels must be binary (False/True or 0/1), got {y!r}")
        q, sq = self._query(vec)
        self._store(q, sq, y)

    def _store(self, q: np.ndarray, sq: float, y: bool | int) -> None:
        """Write a validated vector (:meth:`_query`) and its label into the ring."""
        if self._X is None:
            self._allocate(q.shape[0])
        p = self._pos
        self._X[p] = q
        self._X64[p] = q
        np.multiply(q, -2.0, out=self._Xm2[p])
        self._sq[p] = sq
        if sq > self._sq_max:
            self._sq_max = sq
        self._y[p] = 1.0 if y else 0.0
        self._ids[p] = self._n_seen
        self._n_seen += 1
        self._pos = (p + 1) % self.window_size
        if self._n < self.window_size:
            self._n += 1

    def predict_proba_vec(self, vec: np.ndarray) -> float:
        """Return P(True) for one vector (0.5 on an empty window)."""
        q, qq = self._query(vec)
        slots, dist = self._search(q, qq)
        return self._proba_true(dist, self._y[slots]) if slots.size else 0.5

    def neighbours_vec(self, vec: np.ndarray, return_ids: bool = False) -> tuple[np.ndarray, ...]:
        """Return ``(distances, labels)`` of the nearest stored examples, nearest first.

        ``distances`` are float64 Euclidean distances, ``labels`` a bool array; both have
        ``min(n_neighbors, n_stored)`` entries.  With ``return_ids=True`` a third array
        holds each neighbour's insertion id (0 for the first example ever learnt).
        """
        q, qq = self._query(vec)
        slots, dist = self._search(q, qq)
        if self._y is None:
            labels = np.empty(0, dtype=bool)
            ids = np.empty(0, dtype=np.int64)
        else:
            labels = self._y[slots] > 0.5
            ids = self._ids[slots]
        return (dist, labels, ids) if return_ids else (dist, labels)

    # -- river dict API -----------------------------------------------------------------

    def learn_one(self, x: dict, y: bool | int) -> None:
        """Update the window with a feature dict ``x`` and a binary label ``y``."""
        self.learn_vec(self._dict_to_vec(x, fix=True), y)

    def predict_proba_one(self, x: dict, **kwargs: Any) -> dict[bool, float]:
        """Return ``{False: p0, True: p1}`` for a feature dict ``x``."""
        q = self._dict_to_vec(x, fix=False)
        p1 = 0.5 if q is None else self.predict_proba_vec(q)
        return {False: 1.0 - p1, True: p1}

    def neighbours_one(self, x: dict) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(distances, labels)`` of the nearest stored examples to dict ``x``."""
        q = self._dict_to_vec(x, fix=False)
        if q is None:
            return np.empty(0, dtype=np.float64), np.empty(0, dtype=bool)
        return self.neighbours_vec(q)

    # -- state ----------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Return the full model state as JSON-safe plain data (no pickle).

        Feature names must be ``str`` or ``int`` to be saved.
        """
        n = self._n
        state: dict[str, Any] = {
            "type": "FastKNNClassifier",
            "version": _CLASSIFIER_STATE_VERSION,
            "params": {
                "n_neighbors": self.n_neighbors,
                "window_size": self.window_size,
                "features": _check_json_feature_names(self.features),
                "weighted": self.weighted,
                "prior": self.prior,
            },
            "feature_names": _check_json_feature_names(self._feats),
            "dim": self._d,
            "pos": self._pos,
            "n_stored": n,
            "n_seen": self._n_seen,
            "sq_max": self._sq_max,
        }
        if self._X is not None:
            state["X"] = encode_array(self._X[:n].astype(np.float32, copy=False))
            state["sqnorm"] = encode_array(self._sq[:n].astype(np.float32, copy=False))
            state["labels"] = encode_array(self._y[:n].astype(np.uint8, copy=False))
            state["ids"] = encode_array(self._ids[:n].astype(np.int64, copy=False))
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> FastKNNClassifier:
        """Rebuild a classifier from :meth:`to_state` output; predictions are identical."""
        if state.get("type") != "FastKNNClassifier":
            raise ValueError(f"not a FastKNNClassifier state: type={state.get('type')!r}")
        version = state.get("version")
        if version not in (1, _CLASSIFIER_STATE_VERSION):
            raise ValueError(f"unsupported FastKNNClassifier state version {version}")
        model = cls(**state["params"])
        names = _check_json_feature_names(state.get("feature_names"))
        if names is not None and model._feats is None:
            model._set_features(tuple(names))
        d = state.get("dim")
        n = int(state["n_stored"])
        pos = int(state["pos"])
        if not 0 <= n <= model.window_size or not 0 <= pos < model.window_size:
            raise ValueError("inconsistent window bookkeeping in state")
        if n < model.window_size and pos != n:
            raise ValueError("inconsistent window bookkeeping in state")
        if d is not None:
            d = int(d)
            if model._d is None:
                model._allocate(d)
            elif model._d != d:
                raise ValueError(f"state dim {d} does not match {model._d} features")
            if "X" in state:
                X = _decode_array(state["X"], "float32", version)
                if X.shape != (n, d):
                    raise ValueError(f"state X has shape {X.shape}, expected {(n, d)}")
                model._X[:n] = X
                model._X64[:n] = X
                model._Xm2[:n] = X * np.float32(-2.0)
                model._sq[:n] = _decode_array(state["sqnorm"], "float32", version)
                model._y[:n] = _decode_array(state["labels"], "uint8", version)
                model._ids[:n] = _decode_array(state["ids"], "int64", version)
            elif n:
                raise ValueError("state has stored examples but no arrays")
        elif n:
            raise ValueError("state has stored examples but no dimension")
        model._n = n
        model._pos = pos
        model._n_seen = int(state["n_seen"])
        model._sq_max = float(state["sq_max"])
        return model


# ---------------------------------------------------------------------------
# Importance scorer
# ---------------------------------------------------------------------------


class KNNImportance:
    """Sample-importance score in ``[0, 1]`` from the k nearest neighbours of an embedding.

    ``score = novelty_weight * novelty + (1 - novelty_weight) * disagreement``
    (default weights 0.5 / 0.5), where

    * **novelty** ``= d / (d + typical)``: ``d`` is the query's mean distance to its
      k nearest neighbours in the window and ``typical`` a running estimate of that
      same quantity for the examples that were learnt.  A typical event scores about
      0.5, an event in a dense region less, an outlier close to 1.  ``typical`` is an
      exponential moving average (rate ``typical_decay``, with a ``1/t`` warm-up so the
      first observations are simply averaged) of the mean k-NN distance each learnt
      example had to the window *before* it was added; every observation is clipped
      to ``4 * typical`` so a burst of outliers cannot inflate it quickly.
    * **disagreement** ``= 4 q (1 - q)``: ``q`` is the (inverse-distance weighted, if
      ``weighted``) fraction of positive labels among the neighbours, without a prior.
      0 for a pure neighbourhood, 1 for an even split.

    Edge cases: an empty window scores 1.0 (nothing like the event has been seen and
    its label is unknown); when neighbours exist but no typical distance has been
    observed yet (a single stored example), novelty is the neutral 0.5.

    :meth:`score` does not change the model.  Calling :meth:`learn` with the same
    vector right after :meth:`score` reuses the search done by ``score``, so a
    score-then-learn pair costs one neighbour search.

    Parameters
    ----------
    n_neighbors, window_size, features, weighted
        Passed to the underlying :class:`FastKNNClassifier` (``classifier`` attribute).
    novelty_weight
        Weight of novelty in the blend, in ``[0, 1]``; disagreement gets the rest.
    typical_decay
        EMA rate of the typical neighbour distance, in ``(0, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> scorer = KNNImportance(n_neighbors=5, window_size=200)
    >>> scorer.score(np.zeros(4, dtype=np.float32))  # empty window
    1.0
    >>> for _ in range(200):
    ...     v = rng.normal(size=4).astype(np.float32)
    ...     scorer.learn(v, int(v[0] > 0))
    >>> inlier = np.array([-2.0, 0.0, 0.0, 0.0], dtype=np.float32)
    >>> outlier = np.full(4, 8.0, dtype=np.float32)
    >>> scorer.novelty(outlier) > 0.8 > scorer.novelty(inlier)
    True
    >>> 0.0 <= scorer.score(inlier) < scorer.score(outlier) <= 1.0
    True

    """

    def __init__(
        self,
        n_neighbors: int = 10,
        window_size: int = 1000,
        features: Sequence[Any] | None = None,
        novelty_weight: float = 0.5,
        typical_decay: float = 0.02,
        weighted: bool = True,
    ):
        if not 0.0 <= novelty_weight <= 1.0:
            raise ValueError(f"novelty_weight must be in [0, 1], got {novelty_weight}")
        if not 0.0 < typical_decay <= 1.0:
            raise ValueError(f"typical_decay must be in (0, 1], got {typical_decay}")
        self.n_neighbors = int(n_neighbors)
        self.window_size = int(window_size)
        self.features = tuple(features) if features is not None else None
        self.novelty_weight = float(novelty_weight)
        self.typical_decay = float(typical_decay)
        self.weighted = bool(weighted)
        self.classifier = FastKNNClassifier(
            n_neighbors=self.n_neighbors,
            window_size=self.window_size,
            features=self.features,
            weighted=self.weighted,
        )
        self._typical: float | None = None
        self._n_typical = 0
        self._cache_key: tuple[int, bytes] | None = None
        self._cache_val: tuple[float, float] | None = None

    @property
    def typical_distance(self) -> float | None:
        """Current running estimate of the mean k-NN distance (None before any)."""
        return self._typical

    # -- internals ----------------------------------------------------------------------

    def _assess(self, q: np.ndarray, qq: float) -> tuple[float, float] | None:
        """(mean k-NN distance, weighted positive fraction) for a validated query."""
        clf = self.classifier
        if clf._n == 0:
            return None
        key = (clf._n_seen, q.tobytes())
        if key == self._cache_key:
            return self._cache_val
        slots, dist = clf._search(q, qq)
        # computed as batch_assess computes each row: the same values on both paths
        val = _summary(clf, dist, clf._y[slots])
        self._cache_key, self._cache_val = key, val
        return val

    def _novelty_from(self, assessed: tuple[float, float] | None) -> float:
        if assessed is None:
            return 1.0
        d = assessed[0]
        typ = self._typical
        if typ is None:
            return 0.5
        if typ <= 0.0:
            return 0.0 if d <= 0.0 else 1.0
        return d / (d + typ)

    @staticmethod
    def _disagreement_from(assessed: tuple[float, float] | None) -> float:
        if assessed is None:
            return 1.0
        q = min(max(assessed[1], 0.0), 1.0)
        return 4.0 * q * (1.0 - q)

    def _blend(self, assessed: tuple[float, float] | None) -> float:
        w = self.novelty_weight
        s = w * self._novelty_from(assessed) + (1.0 - w) * self._disagreement_from(assessed)
        return min(max(s, 0.0), 1.0)

    # -- vector API ---------------------------------------------------------------------

    def components(self, vec: np.ndarray) -> tuple[float, float]:
        """Return ``(novelty, disagreement)`` for ``vec``, each in ``[0, 1]``."""
        a = self._assess(*self.classifier._query(vec))
        return self._novelty_from(a), self._disagreement_from(a)

    def novelty(self, vec: np.ndarray) -> float:
        """Novelty component ``d / (d + typical)`` of :meth:`score`."""
        return self.components(vec)[0]

    def disagreement(self, vec: np.ndarray) -> float:
        """Disagreement component ``4 q (1 - q)`` of :meth:`score`."""
        return self.components(vec)[1]

    def score(self, vec: np.ndarray) -> float:
        """Importance of ``vec`` in ``[0, 1]``; does not change the model."""
        return self._blend(self._assess(*self.classifier._query(vec)))

    def learn(self, vec: np.ndarray, y: int) -> None:
        """Update the typical distance with ``vec``'s neighbourhood, then store it."""
        if y not in (0, 1):
            raise ValueError(f"labels must be binary (False/True or 0/1), got {y!r}")
        q, qq = self.classifier._query(vec)
        a = self._assess(q, qq)
        if a is not None:
            self._update_typical(a[0])
        self.classifier._store(q, qq, y)

    def _update_typical(self, d: float) -> None:
        typ = self._typical
        if typ is None:
            self._typical = d
        else:
            alpha = max(self.typical_decay, 1.0 / (self._n_typical + 1))
            if typ > 0.0:
                d = min(d, 4.0 * typ)
            self._typical = typ + alpha * (d - typ)
        self._n_typical += 1

    # -- batch API --------------------------------------------------------------------

    def run(self, vecs: np.ndarray, labels: Sequence[int]) -> list[float | None]:
        """Apply a sequence of operations in order and return their scores.

        ``vecs`` is a ``(T, d)`` array; operation ``t`` scores ``vecs[t]`` when
        ``labels[t]`` is ``-1`` (its :meth:`score`; nothing changes), and otherwise learns
        it with that label (:meth:`learn`; its score is None). The neighbour searches of
        all operations are done together (:func:`batch_assess`): one matrix product of the
        vectors with the window and the rows the batch adds, masked to what each
        operation would see, and one selection per row. The result is what the
        operations in turn would give, the same for any split of the sequence into
        calls (see :func:`batch_assess`), and the model ends in the same state.
        """
        clf = self.classifier
        T = len(labels)
        out: list[float | None] = [None] * T
        if T == 0:
            return out
        V = np.ascontiguousarray(vecs, dtype=np.float32).reshape(T, -1)
        # squared norms as :meth:`FastKNNClassifier._query` computes them (the same state
        # whichever path learnt a row)
        qq = np.array([float(v @ v) for v in V], dtype=np.float32)
        if not np.isfinite(qq).all():
            raise ValueError("vector has non-finite values (or its float32 squared norm overflows)")
        if clf._d is not None and V.shape[1] != clf._d:
            raise ValueError(f"expected vectors of length {clf._d}, got {V.shape[1]}")
        y = [int(v) for v in labels]
        for v in y:
            if v not in (-1, 0, 1):
                raise ValueError(f"labels must be -1 (score), 0 or 1, got {v!r}")
        if clf._X is None:
            clf._allocate(V.shape[1])
        # chunks that add at most window_size rows (rows added in a chunk are not evicted
        # within it)
        start = 0
        while start < T:
            end, learned = start, 0
            while end < T and end - start < _CHUNK and (learned < clf.window_size or y[end] < 0):
                learned += y[end] >= 0
                end += 1
            self._run_chunk(V[start:end], qq[start:end], y[start:end], out, start)
            start = end
        self._cache_key = self._cache_val = None
        return out

    def _run_chunk(
        self, V: np.ndarray, qq: np.ndarray, y: list[int], out: list[float | None], at: int
    ) -> None:
        clf = self.classifier
        # a few operations cost less one by one (the same results: see batch_assess)
        batched = len(y) >= _BATCH_MIN
        assessed = batch_assess(clf, V, qq, y) if batched else None
        w = self.novelty_weight
        for t, label in enumerate(y):
            a = assessed[t] if assessed is not None else self._assess(V[t], float(qq[t]))
            if label < 0:
                s = w * self._novelty_from(a) + (1.0 - w) * self._disagreement_from(a)
                out[at + t] = min(max(s, 0.0), 1.0)
            else:
                if a is not None:
                    self._update_typical(a[0])
                clf._store(V[t], float(qq[t]), label)

    # -- dict API -----------------------------------------------------------------------

    def score_one(self, x: dict) -> float:
        """Dict variant of :meth:`score` (uses the classifier's feature order)."""
        q = self.classifier._dict_to_vec(x, fix=False)
        if q is None:
            return self._blend(None)
        return self.score(q)

    def learn_one(self, x: dict, y: int) -> None:
        """Dict variant of :meth:`learn`."""
        self.learn(self.classifier._dict_to_vec(x, fix=True), y)

    # -- state ----------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Return the scorer state as JSON-safe plain data (no pickle)."""
        return {
            "type": "KNNImportance",
            "version": _STATE_VERSION,
            "params": {
                "n_neighbors": self.n_neighbors,
                "window_size": self.window_size,
                "features": _check_json_feature_names(self.features),
                "novelty_weight": self.novelty_weight,
                "typical_decay": self.typical_decay,
                "weighted": self.weighted,
            },
            "typical": self._typical,
            "n_typical": self._n_typical,
            "classifier": self.classifier.to_state(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> KNNImportance:
        """Rebuild a scorer from :meth:`to_state` output; scores are identical."""
        if state.get("type") != "KNNImportance":
            raise ValueError(f"not a KNNImportance state: type={state.get('type')!r}")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported KNNImportance state version {state.get('version')}")
        scorer = cls(**state["params"])
        scorer.classifier = FastKNNClassifier.from_state(state["classifier"])
        typ = state.get("typical")
        scorer._typical = None if typ is None else float(typ)
        scorer._n_typical = int(state.get("n_typical", 0))
        return scorer

    def __repr__(self) -> str:
        return (
            f"KNNImportance(n_neighbors={self.n_neighbors}, window_size={self.window_size}, "
            f"novelty_weight={self.novelty_weight}, typical_decay={self.typical_decay}, "
            f"weighted={self.weighted}, n_stored={self.classifier.n_stored})"
        )


def _d2(diff: np.ndarray) -> np.ndarray:
    """Squared norms of the rows (last axis) of ``diff``, each summed in the same order
    whatever the array's other dimensions."""
    return np.einsum("...j,...j->...", diff, diff)


def batch_assess(
    clf: FastKNNClassifier, V: np.ndarray, qq: np.ndarray, y: Sequence[int]
) -> list[tuple[float, float] | None]:
    """``(mean k-NN distance, weighted positive fraction)`` (None: empty window) for each
    operation of a sequence (``y[t] == -1``: a query; else a learn, whose row is added
    after its own search), each against the window as it is at its turn.

    The rows the operations add are known beforehand (the learnt vectors), so every
    search is a row of one masked matrix ``-2 Vᵀ[X, L] + ‖·‖²`` (float32), whose ``m``
    best candidates are re-ranked with exact float64 distances (ties by age, oldest
    first) and certified by the float32 rounding bound, as :meth:`FastKNNClassifier._search`
    does; a row that cannot be certified, or that sees too few rows, is searched exactly
    over all the rows it sees. The neighbours are therefore the exact ones, and their
    distances are computed row by row in the same way whatever the batch, so a sequence
    gives the same results in one call or in several. The classifier is not changed.
    """
    T, d = V.shape
    n, W, k = clf._n, clf.window_size, clf.n_neighbors
    learn = np.fromiter((v >= 0 for v in y), dtype=bool, count=T)
    L = V[learn]
    J = L.shape[0]
    # learns before each operation
    before = np.cumsum(learn) - learn
    # the columns: the window's rows from the oldest to the newest, then the rows the
    # batch adds, in order: so ids increase along the columns, and each operation sees a
    # range of them, [evicted, n + learns before it)
    by_age = (clf._pos + np.arange(n)) % W if n == W else np.arange(n)
    newy = np.array([v for v in y if v >= 0], dtype=np.float64)
    X64 = np.concatenate([clf._X64[by_age], L.astype(np.float64)]) if n else L.astype(np.float64)
    Xm2 = np.concatenate([clf._Xm2[by_age], L * np.float32(-2.0)]) if n else L * np.float32(-2.0)
    sq_new = qq[learn]
    sq = np.concatenate([clf._sq[by_age], sq_new]) if n else sq_new
    new_ids = clf._n_seen + np.arange(J, dtype=np.int64)
    ids = np.concatenate([clf._ids[by_age], new_ids]) if n else new_ids
    ylab = np.concatenate([clf._y[by_age], newy]) if n else newy
    evicted = np.maximum(0, n + before - W)  # the oldest rows each operation no longer sees
    hi = n + before
    visible = hi - evicted
    sq_max = np.maximum.accumulate(np.concatenate([[clf._sq_max], sq_new]))[before]
    out: list[tuple[float, float] | None] = [None] * T
    m = k + _MARGIN
    fast = visible > m
    rows = np.flatnonzero(fast)
    pending: list[int] = [int(t) for t in np.flatnonzero(~fast & (visible > 0))]
    if rows.size:
        R, C = rows.size, n + J
        Vf = V[rows]
        lo_r, hi_r = evicted[rows], hi[rows]
        # scores ||x||² - 2 x·q of every column, padded with +inf to whole groups
        ng = -(-C // _GROUP)
        width_c = ng * _GROUP
        if width_c > C:
            Xm2 = np.concatenate([Xm2, np.zeros((width_c - C, d), dtype=np.float32)])
            sq = np.concatenate([sq, np.full(width_c - C, np.inf, dtype=np.float32)])
        scores = Vf @ Xm2.T
        scores += sq
        # hide what each operation does not see (the two ends of the columns)
        e_max = int(lo_r.max())
        if e_max:
            np.copyto(scores[:, :e_max], np.inf, where=np.arange(e_max)[None, :] < lo_r[:, None])
        if J:
            right = scores[:, n:C]  # a view: written in place
            np.copyto(right, np.inf, where=np.arange(J)[None, :] >= (hi_r - n)[:, None])
        # an upper bound on each row's m-th smallest score: the m-th smallest of the
        # minima of interleaved groups of _GROUP columns (m distinct columns are at most
        # that); the candidates are the columns at most the bound, a superset of the m best
        mins = scores[:, :ng].copy()  # group j: the columns j + i·ng
        for g in range(1, _GROUP):
            np.minimum(mins, scores[:, g * ng : (g + 1) * ng], out=mins)
        if ng >= m:
            bound = np.partition(mins, m - 1, axis=1)[:, m - 1]
        else:  # too few groups for a bound: searched exactly below
            bound = np.full(R, np.inf, dtype=np.float32)
        finite = np.isfinite(bound)
        flat = np.flatnonzero(scores <= np.where(finite, bound, -np.inf)[:, None])
        r_idx, c_idx = np.divmod(flat, width_c)
        diff = np.take(X64, c_idx, axis=0)
        diff -= np.take(Vf, r_idx, axis=0)
        d2 = _d2(diff)
        # each row's candidates by exact distance, ties by age (the columns are in id
        # order and the sort is stable), padded with +inf
        counts = np.bincount(r_idx, minlength=R)
        starts = np.cumsum(counts) - counts
        width = max(int(counts.max()), k)
        D = np.full((R, width), np.inf)
        Ccol = np.zeros((R, width), dtype=np.intp)
        pos = np.arange(r_idx.size) - starts[r_idx]
        D[r_idx, pos] = d2
        Ccol[r_idx, pos] = c_idx
        pick = np.argsort(D, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(Ccol, pick, axis=1)
        d2k = np.take_along_axis(D, pick, axis=1)
        qqf = qq[rows].astype(np.float64)
        smax = sq_max[rows]
        err = (d + 2) * 2.0 * _F32_EPS * (smax + 2.0 * np.sqrt(smax * qqf) + qqf)
        # every column outside the candidates has a score > bound: certified when its
        # distance bound exceeds the k-th exact one
        certified = finite & (counts >= k)
        certified &= bound.astype(np.float64) + qqf - err > d2k[:, -1]
        with np.errstate(invalid="ignore"):
            means, fracs = _summaries(clf, np.sqrt(d2k), ylab[top])
        for i in np.flatnonzero(certified):
            out[int(rows[i])] = (float(means[i]), float(fracs[i]))
        pending.extend(int(t) for t in rows[~certified])
    for t in pending:
        cols = np.arange(int(evicted[t]), int(hi[t]))
        diff = X64[cols]
        diff -= V[t]
        d2 = _d2(diff)
        kk = min(k, cols.shape[0])
        if kk < cols.shape[0] and cols.shape[0] > 64:
            kth = np.partition(d2, kk - 1)[kk - 1]
            keep = np.flatnonzero(d2 <= kth)
            cols, d2 = cols[keep], d2[keep]
        order = np.lexsort((ids[cols], d2))[:kk]
        out[t] = _summary(clf, np.sqrt(d2[order]), ylab[cols[order]])
    return out


def _summary(clf: FastKNNClassifier, dist: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """:func:`_summaries` of one row (1-d arrays), with the same arithmetic."""
    k = dist.shape[0]
    mean = float(dist.sum()) / k
    if not clf.weighted:
        return mean, float(labels.sum()) / k
    w = (dist == 0.0).astype(np.float64) if dist[0] == 0.0 else 1.0 / dist
    return mean, float((w * labels).sum()) / float(w.sum())


def _summaries(
    clf: FastKNNClassifier, dist: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``(rows, k)`` neighbour distances (ascending) and labels: the mean
    distance and the weighted positive fraction (:meth:`FastKNNClassifier._positive_mass`
    over ``k``), each row computed the same way whatever the number of rows."""
    k = dist.shape[1]
    means = dist.sum(axis=1) / k
    if not clf.weighted:
        return means, labels.sum(axis=1) / k
    exact = dist[:, 0] == 0.0
    with np.errstate(divide="ignore"):
        w = 1.0 / dist
    if exact.any():
        w[exact] = (dist[exact] == 0.0).astype(np.float64)
    fracs = (w * labels).sum(axis=1) / w.sum(axis=1)
    return means, fracs
