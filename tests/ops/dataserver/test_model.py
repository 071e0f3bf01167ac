"""The reference service's decisions, without I/O (``ops.dataserver.model``)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.sessions.contracts.token import DEFAULT_SESSION, PRACTICE_SESSION
from ops.dataserver.model import (
    UNACKED_TRACKED,
    BadControlRequest,
    CallLater,
    StartClose,
    DataService,
    DropSocket,
    WriteFrame,
)
from ops.dataserver.tokens import TokenAuthority

NOW = 1_800_000_000.0
WS = "ws://127.0.0.1:9"
BEARER = {"id": "auth-1", "type": "authorization", "data": {"token": "Bearer user-secret-token"},
          "trackingId": "llm-default-session_123"}


def service(**options: Any) -> DataService:
    counter = itertools.count(1)
    return DataService(ws_base=WS, http_base="http://127.0.0.1:8", new_id=lambda: f"id{next(counter)}",
                       **options)


def register(svc: DataService, meeting: str = "m1", session: str = DEFAULT_SESSION, *, device: str = "dev:1",
             token: str | None = None) -> dict[str, Any]:
    answer = svc.register(meeting, session, {"deviceUrl": device}, token, NOW)
    assert answer.status == 200, answer.body
    return dict(answer.body)


def open_socket(svc: DataService, url: str, query: str = "outboundWireFormat=text") -> str:
    record, actions = svc.open_socket(url.removeprefix(WS) + "?" + query, NOW)
    assert actions == []
    return record.id


def send(svc: DataService, socket: str, frame: dict[str, Any]) -> list[Any]:
    return svc.receive(socket, json.dumps(frame), NOW)


def online_socket(svc: DataService, meeting: str = "m1", session: str = DEFAULT_SESSION,
                  device: str = "dev:1") -> str:
    socket = open_socket(svc, register(svc, meeting, session, device=device)["webSocketUrl"])
    send(svc, socket, BEARER)
    assert svc.sockets[socket].online
    return socket


# -- register -----------------------------------------------------------------


def test_register_returns_a_fresh_binding_and_its_socket_url_each_call() -> None:
    svc = service()
    first, second = register(svc), register(svc)
    assert first["binding"] != second["binding"]
    assert first["webSocketUrl"] == f"{WS}/v1/socket/{first['binding']}"
    practice = register(svc, session=PRACTICE_SESSION)
    assert svc.bindings[practice["binding"]].session == PRACTICE_SESSION
    assert svc.registers == {f"m1/{DEFAULT_SESSION}": 2, f"m1/{PRACTICE_SESSION}": 1}


@pytest.mark.parametrize("body", [None, [], {}, {"deviceUrl": ""}, {"deviceUrl": 7}])
def test_register_refuses_a_malformed_body_with_400(body: Any) -> None:
    svc = service()
    answer = svc.register("m1", DEFAULT_SESSION, body, None, NOW)
    assert answer.status == 400 and "deviceUrl" in answer.body["error"]
    assert svc.bindings == {}
    assert svc.registers[f"m1/{DEFAULT_SESSION}"] == 1


def test_register_records_the_token_status_never_the_token() -> None:
    svc = service()
    token = svc.authority.issue(subject="me", audience=DEFAULT_SESSION, meeting="m1", now=NOW, ttl_s=60)
    register(svc, token=token)
    register(svc)
    assert [r["token"] for r in svc.register_requests] == ["valid", "absent"]
    assert token not in json.dumps(svc.snapshot())


def test_register_records_whom_the_token_was_issued_to_when_its_signature_checks() -> None:
    svc = service()
    other = TokenAuthority("another service's secret, 32 bytes or more").issue(
        subject="me", audience=DEFAULT_SESSION, meeting="m1", now=NOW, ttl_s=60)
    for subject, meeting in (("former-self", "m1"), ("me", "m2")):
        register(svc, token=svc.authority.issue(subject=subject, audience=PRACTICE_SESSION, meeting=meeting,
                                                now=NOW, ttl_s=-5))  # wrong audience and expired: still whose
    register(svc, token=other)
    register(svc)
    assert [(r["token_meeting"], r["token_self"]) for r in svc.register_requests] == [
        ("m1", "former-self"), ("m2", "me"), (None, None), (None, None)]


def test_required_token_missing_expired_or_for_the_other_session_is_401() -> None:
    svc = service(require_token=True)
    authority = svc.authority
    cases = {
        None: "absent",
        authority.issue(subject="me", audience=DEFAULT_SESSION, meeting="m1", now=NOW, ttl_s=-1): "expired",
        authority.issue(subject="me", audience=PRACTICE_SESSION, meeting="m1", now=NOW, ttl_s=60): "wrong_audience",
        TokenAuthority("another-secret-at-least-32-bytes-long").issue(subject="me", audience=DEFAULT_SESSION, meeting="m1", now=NOW,
                                               ttl_s=60): "invalid",
        "not-a-jwt": "invalid",
    }
    for token, status in cases.items():
        answer = svc.register("m1", DEFAULT_SESSION, {"deviceUrl": "d"}, token, NOW)
        assert (answer.status, answer.body["error"]) == (401, f"data-channel token {status}")
    good = authority.issue(subject="me", audience=DEFAULT_SESSION, meeting="m1", now=NOW, ttl_s=60)
    assert "webSocketUrl" in register(svc, token=good)


def test_register_faults_fail_omit_rotate_and_delay() -> None:
    svc = service()
    svc.apply_faults({"register_fail_next": {"status": 503, "count": 2}, "register_omit_websocket_url": 1,
                      "register_delay_s": 0.25})
    assert [svc.register("m1", DEFAULT_SESSION, {"deviceUrl": "d"}, None, NOW).status for _ in range(2)] == [503, 503]
    omitted = svc.register("m1", DEFAULT_SESSION, {"deviceUrl": "d"}, None, NOW)
    assert omitted.status == 200 and "webSocketUrl" not in omitted.body and omitted.delay == 0.25
    assert "webSocketUrl" in register(svc)
    svc.apply_faults({"rotate_urls": True, "register_delay_s": 0})
    rotated = register(svc)
    assert rotated["webSocketUrl"] == f"{WS}/v2/socket/{rotated['binding']}"
    assert svc.counters["register_failures"] == 2


# -- locus and tokens ---------------------------------------------------------


def test_locus_names_both_register_urls() -> None:
    body = service().locus("m7").body
    assert body["datachannelUrl"] == "http://127.0.0.1:8/datachannel/m7"
    assert body["practiceSessionDatachannelUrl"] == "http://127.0.0.1:8/datachannel/m7/practice"


def test_token_needs_a_bearer_and_is_a_jwt_for_self_and_session() -> None:
    svc = service()
    assert svc.token("m1", "me", DEFAULT_SESSION, {}, NOW).status == 401
    assert svc.token("m1", "me", DEFAULT_SESSION, {"Authorization": "Bearer "}, NOW).status == 401
    answer = svc.token("m1", "me", PRACTICE_SESSION, {"Authorization": "Bearer u"}, NOW)
    token = answer.body["datachannelToken"]
    assert svc.authority.check(token, audience=PRACTICE_SESSION, now=NOW) == "valid"
    assert svc.authority.check(token, audience=DEFAULT_SESSION, now=NOW) == "wrong_audience"
    assert svc.authority.check(token, audience=PRACTICE_SESSION, now=NOW + 3600) == "expired"


def test_token_requests_are_recorded_with_secret_headers_redacted() -> None:
    svc = service()
    headers = {"Authorization": "Bearer user-secret", "X-Huddle-Meeting": "m1", "Cookie": "sid=secret",
               "X-Auth-Token": "t-secret"}
    token = svc.token("m1", "me", DEFAULT_SESSION, headers, NOW).body["datachannelToken"]
    (record,) = svc.token_requests
    assert record["headers"] == {"Authorization": {"present": True}, "X-Huddle-Meeting": "m1",
                                 "Cookie": {"present": True}, "X-Auth-Token": {"present": True}}
    assert record["authorization"] == {"present": True} and record["status"] == 200
    text = json.dumps(svc.snapshot())
    for secret in ("user-secret", "sid=secret", "t-secret", token):
        assert secret not in text


def test_token_faults_fail_next_and_ttl() -> None:
    svc = service()
    svc.apply_faults({"token_fail_next": {"status": 403, "count": 1}, "token_ttl_s": 5})
    assert svc.token("m1", "me", DEFAULT_SESSION, {"Authorization": "Bearer u"}, NOW).status == 403
    token = svc.token("m1", "me", DEFAULT_SESSION, {"Authorization": "Bearer u"}, NOW).body["datachannelToken"]
    assert svc.authority.check(token, audience=DEFAULT_SESSION, now=NOW + 4) == "valid"
    assert svc.authority.check(token, audience=DEFAULT_SESSION, now=NOW + 5) == "expired"


def test_token_delay_holds_every_token_answer_until_turned_off() -> None:
    svc = service()
    assert svc.token("m1", "me", DEFAULT_SESSION, {"Authorization": "Bearer u"}, NOW).delay == 0
    result, _ = svc.apply_faults({"token_delay_s": 2.5, "token_fail_next": {"status": 503, "count": 1}})
    assert result["faults"]["token_delay_s"] == 2.5
    answers = [svc.token("m1", "me", DEFAULT_SESSION, headers, NOW)
               for headers in ({"Authorization": "Bearer u"}, {"Authorization": "Bearer u"}, {})]
    assert [(a.status, a.delay) for a in answers] == [(503, 2.5), (200, 2.5), (401, 2.5)]
    # The register endpoint is not held by it.
    assert svc.register("m1", DEFAULT_SESSION, {"deviceUrl": "d"}, None, NOW).delay == 0
    svc.apply_faults({"token_delay_s": 0})
    assert svc.token("m1", "me", DEFAULT_SESSION, {"Authorization": "Bearer u"}, NOW).delay == 0
    # A reset forgets it.
    svc.apply_faults({"token_delay_s": 1})
    svc.reset()
    assert svc.snapshot()["faults"]["token_delay_s"] == 0


# -- opening a socket ---------------------------------------------------------


def test_open_records_the_query_and_an_unknown_binding_is_refused_4400() -> None:
    svc = service()
    url = register(svc)["webSocketUrl"]
    socket = open_socket(svc, url, "outboundWireFormat=text&bufferStates=true&aliasHttpStatus=true"
                                   "&clientTimestamp=123&subscriptionAwareSubchannels=transcription")
    assert svc.sockets[socket].query == {"outboundWireFormat": "text", "bufferStates": "true",
                                         "aliasHttpStatus": "true", "clientTimestamp": "123",
                                         "subscriptionAwareSubchannels": "transcription"}
    for path in ("/v1/socket/nope", url.removeprefix(WS).replace("/v1/", "/v2/"), "/elsewhere"):
        record, actions = svc.open_socket(path, NOW)
        assert actions == [StartClose(record.id, 4400, "unknown binding")]
        assert record.refused == 4400


def test_refuse_next_refuses_count_matching_opens_then_stops() -> None:
    svc = service()
    svc.apply_faults({"refuse_next": {"code": 4401, "count": 2, "session": "practice"}})
    default_url = register(svc)["webSocketUrl"]
    practice_url = register(svc, session=PRACTICE_SESSION)["webSocketUrl"]
    open_socket(svc, default_url)
    codes = []
    for _ in range(3):
        _, actions = svc.open_socket(practice_url.removeprefix(WS), NOW)
        codes.append(actions[0].code if actions else None)
    assert codes == [4401, 4401, None]
    assert svc.faults.refusals == []


# -- frames -------------------------------------------------------------------


def test_authorization_first_then_buffer_state_numbered_one() -> None:
    svc = service()
    socket = open_socket(svc, register(svc)["webSocketUrl"])
    assert not svc.sockets[socket].online
    actions = send(svc, socket, BEARER)
    assert actions == [WriteFrame(socket, {"data": {"eventType": "mercury.buffer_state"}, "id": "id2",
                                          "sequenceNumber": 1})]
    record = svc.sockets[socket]
    assert record.authorized and record.online and svc.online_count == 1
    assert record.tracking_id == "llm-default-session_123"


@pytest.mark.parametrize(("frame", "code"), [
    ({"id": "p", "type": "ping"}, 1008),
    ({"type": "authorization", "data": {"token": "user-token"}}, 4401),
    ({"type": "authorization", "data": {"token": "Bearer  "}}, 4401),
    ({"type": "authorization"}, 4401),
])
def test_anything_but_a_bearer_authorization_first_closes(frame: dict[str, Any], code: int) -> None:
    svc = service()
    socket = open_socket(svc, register(svc)["webSocketUrl"])
    (action,) = send(svc, socket, frame)
    assert isinstance(action, StartClose) and action.code == code
    assert not svc.sockets[socket].authorized


def test_acks_are_counted_and_matched_to_sent_frames() -> None:
    svc = service()
    socket = online_socket(svc)
    record = svc.sockets[socket]
    (sent_id,) = record.unacked
    send(svc, socket, {"messageId": sent_id, "type": "ack"})
    send(svc, socket, {"messageId": "never-sent", "type": "ack"})
    assert (record.acks, len(record.unacked), svc.counters["acks_unknown"]) == (2, 0, 1)


def test_a_client_that_never_acks_costs_bounded_memory() -> None:
    svc = service()
    socket = online_socket(svc)
    for _ in range(UNACKED_TRACKED + 50):
        svc.push({"frame": {"data": {}}, "socket": socket})
    assert len(svc.sockets[socket].unacked) == UNACKED_TRACKED
    assert svc.sockets[socket].as_json()["last_sequence"] == UNACKED_TRACKED + 51


def test_ping_is_answered_with_a_pong_of_the_same_id_unless_withheld_or_mismatched() -> None:
    svc = service()
    socket = online_socket(svc)
    assert send(svc, socket, {"id": "p-1", "type": "ping"}) == [
        WriteFrame(socket, {"id": "p-1", "type": "pong", "sequenceNumber": 2})]
    svc.apply_faults({"withhold": {"pong": True}})
    assert send(svc, socket, {"id": "p-2", "type": "ping"}) == []
    svc.apply_faults({"withhold": {"pong": False}, "pong_mismatch": True})
    (pong,) = send(svc, socket, {"id": "p-3", "type": "ping"})
    assert pong.frame["type"] == "pong" and pong.frame["id"] != "p-3" and pong.frame["sequenceNumber"] == 3
    assert svc.sockets[socket].pings == 3


def test_pongs_are_numbered_in_one_run_with_every_other_server_frame() -> None:
    svc = service()
    socket = online_socket(svc)  # buffer state: 1
    frames = []
    for i in range(3):
        (pong,) = send(svc, socket, {"id": f"p-{i}", "type": "ping"})
        _, pushed = svc.push({"frame": {"data": {"eventType": "relay.event"}}, "socket": socket})
        frames += [pong.frame, *(a.frame for a in pushed)]
    assert [(f.get("type"), f["sequenceNumber"]) for f in frames] == [
        ("pong", 2), (None, 3), ("pong", 4), (None, 5), ("pong", 6), (None, 7)]
    assert [f["id"] for f in frames if f.get("type") == "pong"] == ["p-0", "p-1", "p-2"]
    # A gap asked for with sequence_skip lands on whatever frame comes next, a pong too.
    svc.push({"sequence_skip": 2, "socket": socket})
    (pong,) = send(svc, socket, {"id": "p-3", "type": "ping"})
    assert pong.frame["sequenceNumber"] == 10
    record = svc.sockets[socket]
    assert (record.frames_sent, svc.counters["frames_sent"]) == (8, 8)


def test_a_pong_keeps_an_integer_ping_id_gets_one_if_the_ping_had_none_and_its_ack_is_matched() -> None:
    svc = service()
    socket = online_socket(svc)
    (pong,) = send(svc, socket, {"id": 7, "type": "ping"})
    assert pong.frame == {"id": 7, "type": "pong", "sequenceNumber": 2}
    (pong,) = send(svc, socket, {"type": "ping"})
    assert isinstance(pong.frame["id"], str) and pong.frame["id"] and pong.frame["sequenceNumber"] == 3
    record = svc.sockets[socket]
    for frame_id in list(record.unacked):
        send(svc, socket, {"messageId": frame_id, "type": "ack"})
    assert (record.acks, len(record.unacked), svc.counters["acks_unknown"]) == (3, 0, 0)


def test_bad_and_unknown_frames_are_counted_and_change_nothing() -> None:
    svc = service()
    socket = online_socket(svc)
    assert svc.receive(socket, "{not json", NOW) == []
    assert svc.receive(socket, "[1, 2]", NOW) == []
    assert send(svc, socket, {"type": "whatever"}) == []
    assert send(svc, socket, {"type": "subchannelSubscriptionRequest", "data": {"subscribe": "x"}}) == []
    assert (svc.counters["bad_frames"], svc.counters["unknown_frames"]) == (3, 1)
    assert svc.sockets[socket].open


def test_subscriptions_are_kept_per_socket_per_binding_and_per_session() -> None:
    svc = service()
    socket = online_socket(svc)
    request = {"id": "1", "type": "subchannelSubscriptionRequest",
               "data": {"datachannelUri": "x", "subscribe": ["transcription", "reactions"], "unsubscribe": []}}
    send(svc, socket, request)
    request["data"] = {"subscribe": [], "unsubscribe": ["reactions"]}
    send(svc, socket, request)
    record = svc.sockets[socket]
    assert record.subscriptions == ["transcription"] and record.subscription_requests == 2
    assert svc.bindings[record.binding].subscriptions == ["transcription"]
    assert svc.snapshot()["subscriptions"] == {f"m1/{DEFAULT_SESSION}": ["transcription"]}
    # A new socket of the same session starts with none of its own.
    assert svc.sockets[online_socket(svc)].subscriptions == []


def test_the_open_view_lists_open_sockets_briefly_and_a_closed_one_not_at_all() -> None:
    svc = service()
    closed = online_socket(svc, "m1", device="dev:1")
    svc.socket_closed(closed, 1000, "bye", "client")
    live = online_socket(svc, "m1", device="dev:2")
    send(svc, live, {"id": "1", "type": "subchannelSubscriptionRequest",
                     "data": {"subscribe": ["transcription"], "unsubscribe": []}})
    view = svc.snapshot(detail="open")
    assert view["sockets"] == [{"id": live, "meeting": "m1", "session": DEFAULT_SESSION, "device_url": "dev:2",
                                "open": True, "online": True, "subscriptions": ["transcription"],
                                "opened_at": NOW, "subscribed_at": NOW}]
    assert "register_requests" not in view and "token_requests" not in view
    assert view["online"] == 1 and view["subscriptions"] == svc.snapshot()["subscriptions"]
    assert {s["id"] for s in svc.snapshot()["sockets"]} == {closed, live}


def test_withheld_buffer_state_keeps_the_socket_offline_until_released() -> None:
    svc = service()
    svc.apply_faults({"withhold": {"buffer_state": True}})
    socket = open_socket(svc, register(svc)["webSocketUrl"])
    assert send(svc, socket, BEARER) == []
    record = svc.sockets[socket]
    assert record.authorized and not record.online
    assert svc.push({"frame": {"data": {"eventType": "relay.event"}}}) == (0, [])
    _, actions = svc.apply_faults({"withhold": {"buffer_state": False}})
    assert [a.frame["data"]["eventType"] for a in actions] == ["mercury.buffer_state"]
    assert record.online


# -- control: push, shutdown, drop, close, reset ------------------------------


def test_push_numbers_frames_per_socket_and_sequence_skip_makes_a_gap() -> None:
    svc = service()
    first, second = online_socket(svc, "m1"), online_socket(svc, "m2")
    reached, actions = svc.push({"frame": {"data": {"eventType": "relay.event"}}, "meeting": "m1"})
    assert reached == 1 and [(a.socket, a.frame["sequenceNumber"]) for a in actions] == [(first, 2)]
    svc.push({"sequence_skip": 1, "socket": first})
    _, actions = svc.push({"frame": {"id": "keep-me", "data": {}}})
    assert sorted((a.socket, a.frame["sequenceNumber"], a.frame["id"]) for a in actions) == [
        (first, 4, "keep-me"), (second, 2, "keep-me")]
    _, actions = svc.push({"frame": {"data": {}}, "sequence_skip": 2, "socket": second})
    assert actions[0].frame["sequenceNumber"] == 5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=20))
def test_sequence_numbers_increase_by_one_plus_the_skip(skips: list[int]) -> None:
    svc = service()
    socket = online_socket(svc)
    numbers = [1]
    for skip in skips:
        _, (action,) = svc.push({"frame": {"data": {}}, "sequence_skip": skip, "socket": socket})
        assert action.frame["sequenceNumber"] == numbers[-1] + 1 + skip
        numbers.append(action.frame["sequenceNumber"])


def test_shutdown_then_a_new_socket_online_replaces_the_old_with_4001() -> None:
    svc = service()
    svc.apply_faults({"shutdown_grace_s": 3})
    old = online_socket(svc)
    other_device = online_socket(svc, device="dev:2")
    reached, actions = svc.shutdown({"meeting": "m1", "socket": old})
    assert reached == 1
    assert actions[0].frame["type"] == "shutdown" and actions[0].frame["sequenceNumber"] == 2
    assert actions[1] == CallLater(old, 3.0)
    socket = open_socket(svc, register(svc)["webSocketUrl"])
    actions = send(svc, socket, BEARER)
    assert actions[1:] == [StartClose(old, 4001, "replaced")]
    assert svc.sockets[old].replaced_by == socket and svc.counters["switchovers"] == 1
    assert svc.replacement_deadline(old) == []
    assert svc.sockets[other_device].replaced_by is None


def test_a_shut_down_socket_not_replaced_in_time_is_closed_4001() -> None:
    svc = service()
    old = online_socket(svc)
    svc.shutdown({})
    assert svc.replacement_deadline(old) == [StartClose(old, 4001, "shutdown grace expired")]
    svc.socket_closed(old, 4001, "shutdown grace expired", "server")
    assert svc.replacement_deadline(old) == []


def test_drop_and_close_act_on_matching_open_sockets_only() -> None:
    svc = service()
    a, b = online_socket(svc, "m1"), online_socket(svc, "m2", PRACTICE_SESSION)
    result, actions = svc.apply_faults({"drop": {"meeting": "m1"},
                                        "close": {"code": 3050, "reason": "done (permanent)",
                                                  "session": "practice"}})
    assert actions == [DropSocket(a), StartClose(b, 3050, "done (permanent)")]
    assert result["affected"] == {"drop": 1, "close": 1}


@pytest.mark.parametrize("body", [
    {"nonsense": 1},
    {"close": {"code": 1006}},
    {"close": {"code": 1000, "colour": "red"}},
    {"drop": {"session": "neither"}},
    {"refuse_next": {"code": 4401, "count": -1}},
    {"withhold": {"pong": "yes"}},
    {"register_fail_next": {"status": 200}},
    {"register_delay_s": -1},
    {"token_delay_s": -0.5},
    {"token_delay_s": "1"},
    {"withhold": {"pong": True}, "drop": {"meeting": 7}},
])
def test_bad_fault_requests_are_refused_whole(body: dict[str, Any]) -> None:
    svc = service()
    with pytest.raises(BadControlRequest):
        svc.apply_faults(body)
    assert svc.faults.as_json() == service().faults.as_json()


def test_socket_closed_is_recorded_and_counts_fall() -> None:
    svc = service()
    socket = online_socket(svc)
    svc.socket_closed(socket, 1000, "bye", "client")
    assert svc.sockets[socket].close == {"code": 1000, "reason": "bye", "by": "client"}
    assert (svc.open_count, svc.online_count) == (0, 0)
    assert svc.receive(socket, json.dumps({"id": "p", "type": "ping"}), NOW) == []


def test_reset_closes_every_socket_1001_and_forgets_everything_but_start_options() -> None:
    svc = service(require_token=True, token_ttl_s=60)
    svc.apply_faults({"require_token": False, "withhold": {"pong": True}})
    socket = online_socket(svc)
    assert svc.reset() == [StartClose(socket, 1001, "reset")]
    snapshot = svc.snapshot()
    assert snapshot["sockets"] == [] and snapshot["registers"] == {} and snapshot["open"] == 0
    assert snapshot["faults"]["require_token"] is True and snapshot["faults"]["token_ttl_s"] == 60
    assert snapshot["faults"]["withhold"]["pong"] is False
    # Ids keep counting, so a late close of an old socket touches nothing new.
    svc.faults.require_token = False
    assert open_socket(svc, register(svc)["webSocketUrl"]) != socket
    svc.socket_closed(socket, 1001, "reset", "server")
    assert svc.open_count == 1


def test_state_never_holds_a_token_value() -> None:
    svc = service()
    user_token = "Bearer user-secret-token"
    dc_token = svc.token("m1", "me", DEFAULT_SESSION, {"Authorization": user_token}, NOW).body["datachannelToken"]
    socket = open_socket(svc, register(svc, token=dc_token)["webSocketUrl"])
    send(svc, socket, {"id": "a", "type": "authorization", "data": {"token": user_token}})
    text = json.dumps(svc.snapshot())
    assert dc_token not in text and "user-secret-token" not in text
