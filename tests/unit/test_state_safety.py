"""Model state read back from Kafka is untrusted: it is only ever parsed as JSON, and any
content (pickles, wrong types, hostile sizes) ends in ``StateError``, never in code
execution, a crash or a huge allocation."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.engine import ImportanceEngine
from models.events import decode_event
from models.state import StateError
from stream_app.model_store import decode_parts, encode_parts

ROOT = Path(__file__).resolve().parents[2]


class Boom:
    """Unpickling this runs code: the test fails if anything unpickles it."""

    def __reduce__(self):
        return (pytest.fail, ("a pickle from Kafka was unpickled",))


def engine() -> ImportanceEngine:
    return ImportanceEngine(knn_window=50, rank_window=64)


def trained_state() -> dict:
    eng = engine()
    for i in range(200):
        ev = decode_event(
            orjson.dumps({"user_id": i % 7, "item_id": i % 13, "type": "view", "ts": 1.7e9 + i})
        )
        eng.score(ev)
        eng.learn(ev, i % 2)
    return orjson.loads(orjson.dumps(eng.to_state()))


GOOD = trained_state()
PICKLE = pickle.dumps(Boom())


def test_a_snapshot_round_trips_through_its_kafka_encoding():
    raw = {key.decode().split(":", 1)[1]: value for key, value in encode_parts(3, GOOD)}
    eng = engine()
    eng.load_state(decode_parts(raw))
    assert eng.updates == GOOD["logistic"]["updates"]


@pytest.mark.parametrize("name", ["meta", "logistic", "knn", "behavior"])
def test_a_pickled_part_is_refused_not_unpickled(name):
    raw = {key.decode().split(":", 1)[1]: value for key, value in encode_parts(0, GOOD)}
    raw[name] = PICKLE
    with pytest.raises(StateError, match="not JSON"):
        decode_parts(raw)


@pytest.mark.parametrize(
    "value", [b"[]", b'"meta"', b"1", b"null", b"\xff\xfe", b"", b"{", b'{"a":1} x']
)
def test_a_part_that_is_not_a_json_object_is_refused(value):
    with pytest.raises(StateError):
        decode_parts({"meta": value})


@pytest.mark.parametrize(
    "parts",
    [
        PICKLE,
        {"meta": PICKLE},
        {name: PICKLE for name in ("meta", "logistic", "knn", "behavior")},
        {**GOOD, "knn": PICKLE},
        [GOOD],
        "meta",
        None,
    ],
    ids=["bytes", "meta-bytes", "all-bytes", "knn-bytes", "list", "str", "none"],
)
def test_load_state_refuses_pickles_and_non_objects(parts):
    with pytest.raises(StateError):
        engine().load_state(parts)


def _mutated(path: list, value) -> dict:
    state = orjson.loads(orjson.dumps(GOOD))
    node = state
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return state


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["knn", "classifier", "dim"], 2**40),  # would allocate window x 2**40 floats
        (["knn", "classifier", "params", "window_size"], 10**12),
        (["knn", "params", "window_size"], 10**12),
        (["knn", "params", "features"], [{"a": 1}]),  # would fail only when saved again
        (["meta", "version"], 2**64 - 1),  # would overflow at the next snapshot
        (["meta", "seen"], 1e300),
        (["logistic", "updates"], -(2**63)),
        (["behavior", "seen"], 2**63),
    ],
)
def test_hostile_sizes_and_counters_are_refused(path, value):
    with pytest.raises(StateError):
        engine().load_state(_mutated(path, value))


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_json_in_place_of_any_state_value_is_state_error_or_works(data):
    """Replace one value anywhere in a real state by arbitrary JSON: loading raises
    StateError, or the engine loads and keeps scoring, learning and saving."""
    state = orjson.loads(orjson.dumps(GOOD))
    node, key = state, None
    while True:
        keys = sorted(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        child = node[key]
        if not isinstance(child, (dict, list)) or data.draw(st.booleans()):
            break
        node = child
    if key is not None:
        node[key] = data.draw(json_values)
    eng = engine()
    try:
        eng.load_state(state)
    except StateError:
        return
    ev = decode_event(b'{"user_id": 1, "item_id": 2, "type": "click", "ts": 1700000500}')
    eng.score(ev)
    eng.learn(ev, 1)
    orjson.dumps(eng.to_state())


# --------------------------------------------------------------------------------------
# Static: nothing on the load path can deserialise code
# --------------------------------------------------------------------------------------

_FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}
_FORBIDDEN_MODULES |= {"joblib", "copyreg", "yaml", "jsonpickle"}
_FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
LOAD_PATH = [*sorted((ROOT / "models").rglob("*.py")), ROOT / "stream_app" / "model_store.py"]


@pytest.mark.parametrize("path", LOAD_PATH, ids=lambda p: str(p.relative_to(ROOT)))
def test_load_path_imports_no_deserialiser_and_evaluates_nothing(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names = {(node.module or "").split(".")[0]}
        else:
            names = set()
        assert not names & _FORBIDDEN_MODULES, f"{path}:{node.lineno} imports {names}"
        if isinstance(node, ast.Call):
            func = node.func
            call = f"{path}:{node.lineno} calls {ast.unparse(func)}"
            if isinstance(func, ast.Name):
                assert func.id not in _FORBIDDEN_CALLS, call
            elif isinstance(func, ast.Attribute):
                assert func.attr not in {"eval", "exec", "__import__"}, call
                if func.attr in {"load", "loads"}:  # only JSON parsers may load
                    assert getattr(func.value, "id", None) in {"orjson", "json"}, call
            for kw in node.keywords:
                assert kw.arg != "allow_pickle", f"{path}:{node.lineno} passes allow_pickle"


def test_a_feature_name_that_cannot_be_saved_again_is_refused_at_load():
    """Found by the property test above: ``feature_names: [null]`` loaded, then the next
    snapshot raised TypeError."""
    state = orjson.loads(orjson.dumps(GOOD))
    state["knn"]["classifier"]["feature_names"] = [None]
    with pytest.raises(StateError):
        engine().load_state(state)
