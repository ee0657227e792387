"""The wire schema and the naming rules."""

from __future__ import annotations

import json

import pytest

from tracked import InvalidName, State
from tracked._state import make_key, validate_progress_id

WIRE_KEYS = [
    "name",
    "progress_id",
    "total",
    "count",
    "percent",
    "messages",
    "message_count",
    "in_progress",
    "state",
    "cancel_requested",
    "position",
    "attempt",
    "status",
    "error",
    "start_time",
    "current_time",
    "finished_time",
    "elapsed",
    "rate",
    "eta",
    "result",
]


def sample(**changes: object) -> State:
    base = dict(
        name="job",
        total=200,
        count=50,
        messages=("a", "b"),
        message_count=7,
        start_time=1000.0,
        current_time=1010.0,
        rate=5.0,
    )
    base.update(changes)
    return State(**base)  # type: ignore[arg-type]


def test_wire_json_has_exactly_the_documented_keys_in_order() -> None:
    assert list(sample().to_dict()) == WIRE_KEYS


def test_wire_json_round_trips_through_json_text() -> None:
    state = sample(error="boom", finished_time=1012.5, in_progress=False, state="failed")
    assert State.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_derived_fields_follow_count_total_and_rate() -> None:
    data = sample().to_dict()
    assert data["percent"] == 25.0
    assert data["elapsed"] == 10.0
    assert data["eta"] == 30.0  # 150 left at 5 per second


def test_unknown_total_has_no_percent_and_no_eta() -> None:
    data = sample(total=None).to_dict()
    assert data["percent"] is None and data["eta"] is None


def test_eta_is_unknown_until_a_rate_is() -> None:
    assert sample(rate=None).eta is None


def test_elapsed_stops_at_the_finish() -> None:
    state = sample(finished_time=1004.0, current_time=1004.0, in_progress=False, state="finished")
    assert state.elapsed == 4.0 and state.eta == 0.0


@pytest.mark.parametrize(
    "broken",
    [
        {"count": "3"},
        {"messages": "not a list"},
        {"messages": [1, 2]},
        {"state": "exploded"},
        {"in_progress": "yes"},
        {"total": -1},
    ],
)
def test_from_dict_rejects_malformed_records_with_value_error(broken: dict[str, object]) -> None:
    data = {**sample().to_dict(), **broken}
    with pytest.raises(ValueError):
        State.from_dict(data)


def test_from_dict_rejects_a_missing_key() -> None:
    data = sample().to_dict()
    del data["count"]
    with pytest.raises(ValueError, match="count"):
        State.from_dict(data)


def test_messages_since_keeps_only_messages_at_or_after_the_index() -> None:
    state = sample(messages=("m5", "m6"), message_count=7)  # indices 5 and 6
    assert state.messages_since(6).messages == ("m6",)
    assert state.messages_since(0).messages == ("m5", "m6")
    assert state.messages_since(7).messages == ()


@pytest.mark.parametrize("name", ["", "x" * 513, "a\0b", "\ud800"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidName):
        make_key(name)


@pytest.mark.parametrize("name", ["x" * 512, "ünïcødé ✓", "../../etc/passwd", "a/b/c", " "])
def test_any_other_text_is_a_name(name: str) -> None:
    assert make_key(name) == name


@pytest.mark.parametrize("progress_id", ["", "a b", "x" * 129, "../x", "é"])
def test_bad_progress_ids_are_refused(progress_id: str) -> None:
    with pytest.raises(InvalidName, match="progress_id"):
        validate_progress_id(progress_id)


def test_a_progress_id_alone_is_the_whole_key() -> None:
    assert make_key(None, "1000") == "1000"


def test_name_and_progress_id_combine_without_ambiguity() -> None:
    assert make_key("job", "1") != make_key("job/1") != make_key("job1")
    assert make_key("job", "1") != make_key("job", "2")


def test_a_key_needs_a_name_or_a_progress_id() -> None:
    with pytest.raises(InvalidName):
        make_key(None, None)


def test_records_written_before_the_lifecycle_fields_read_with_their_defaults() -> None:
    data = sample().to_dict()
    for key in ("cancel_requested", "position", "attempt"):
        del data[key]
    state = State.from_dict(data)
    assert (state.cancel_requested, state.position, state.attempt) == (False, None, 1)


@pytest.mark.parametrize(
    ("key", "value"),
    [("position", 0), ("position", -1), ("position", "1"), ("attempt", 0), ("attempt", True),
     ("cancel_requested", 1), ("cancel_requested", None)],
)
def test_lifecycle_fields_of_the_wrong_kind_are_refused(key: str, value: object) -> None:
    data = sample().to_dict()
    data[key] = value
    with pytest.raises(ValueError):
        State.from_dict(data)


def test_a_queued_run_is_in_progress_and_not_ended() -> None:
    from tracked._state import ENDED_STATES, STATES

    assert STATES[0] == "queued"
    assert "queued" not in ENDED_STATES and "running" not in ENDED_STATES
    queued = State.from_dict({**sample().to_dict(), "state": "queued", "position": 3})
    assert (queued.in_progress, queued.position) == (True, 3)
