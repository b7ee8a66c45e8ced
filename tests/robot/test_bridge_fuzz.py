"""Hostile input: random bytes, random msgpack structures and extreme numbers never crash the arm server
and never move the arm outside its workspace."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from bridge_helpers import RawClient, dry_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from maskvit_mpc.configs.schema import SafetyConfig
from maskvit_mpc.robot.protocol import MsgType
from maskvit_mpc.robot.safety import ActionLimiter

SAFETY = SafetyConfig(max_message_bytes=4096)
LIMITER = ActionLimiter(SAFETY)
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

extreme_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, 0.3, -0.3, 1.0, -1.0]),
)
msgpack_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = st.one_of(
    st.none(), st.booleans(), msgpack_ints, extreme_floats, st.text(max_size=20), st.binary(max_size=40)
)
structures = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=8), msgpack_ints), children, max_size=6),
    ),
    max_leaves=30,
)
request_types = st.one_of(st.sampled_from([t.value for t in MsgType]), st.text(max_size=12))
numbers = st.one_of(extreme_floats, msgpack_ints)
actions = st.one_of(st.lists(numbers, min_size=5, max_size=5), st.lists(numbers, max_size=8), structures)
protocol_shaped = st.fixed_dictionaries(
    {"v": st.one_of(st.just(1), scalars), "type": request_types, "id": st.one_of(msgpack_ints, scalars)},
    optional={
        "t": st.one_of(extreme_floats, scalars),
        "seq": st.one_of(msgpack_ints, scalars),
        "action": actions,
        "options": st.one_of(
            st.fixed_dictionaries({}, optional={"pose": actions, "seed": scalars, "state": scalars}),
            structures,
        ),
        "extra": structures,
    },
)


@pytest.fixture(scope="module")
def served():
    with dry_server(SAFETY) as (server, backend, ep):
        raw = RawClient(ep.command)
        yield server, backend, raw
        raw.close()


def _check_alive_and_inside(served) -> None:
    server, backend, raw = served
    reply = raw.request("get_state")
    assert reply is not None and reply["type"] == "state", "the server stopped answering"
    pose = np.asarray(reply["state"]["pose"])
    assert LIMITER.contains(pose), f"pose {pose} left the workspace"
    assert LIMITER.contains(backend.pose())


@FUZZ
@given(payload=st.binary(max_size=2000))
def test_random_bytes(served, payload):
    reply = served[2].send_bytes(payload)
    assert reply is not None and reply["type"] in ("error", "state", "applied", "welcome")
    _check_alive_and_inside(served)


@FUZZ
@given(message=structures)
def test_random_msgpack_structures(served, message):
    reply = served[2].send_bytes(msgpack.packb(message, use_bin_type=True))
    assert reply is not None and reply["type"] == "error"
    _check_alive_and_inside(served)


@FUZZ
@given(message=protocol_shaped)
def test_protocol_shaped_messages_with_extreme_values(served, message):
    payload = msgpack.packb(message, use_bin_type=True)
    reply = served[2].send_bytes(payload)
    assert reply is not None
    if len(payload) > SAFETY.max_message_bytes:
        assert reply["code"] == "TOO_LARGE"
    _check_alive_and_inside(served)


@FUZZ
@given(
    steps=st.lists(
        st.lists(st.one_of(extreme_floats, st.floats(-1, 1)), min_size=5, max_size=5), min_size=1, max_size=20
    )
)
def test_valid_commands_with_extreme_numbers_stay_inside(served, steps):
    server, backend, raw = served
    raw.request("reset_estop")
    for action in steps:
        seq = server.sequence.last + 1
        reply = raw.request("command", seq=seq, action=action)
        finite = all(np.isfinite(action))
        assert reply["type"] == ("applied" if finite else "error")
        if finite:
            applied = np.asarray(reply["applied"])
            assert np.all(np.abs(applied[:4]) <= LIMITER.step + 1e-12)
            assert reply["clipped"] == (not np.allclose(applied, action, rtol=0, atol=1e-9))
        _check_alive_and_inside(served)
