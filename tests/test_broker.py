"""The broker core on its own: synchronous, no sockets, time passed in."""

from __future__ import annotations

import orjson
import pytest

from tcpmq.broker import BODY_OVERHEAD, SLOT_BYTES, Broker, Entry
from tcpmq.config import Limits
from tcpmq.errors import AlreadyExists, Forbidden, LimitExceeded, NotFound, TcpmqError

PUBLISHER = orjson.dumps("alice")


class RecordingWaiter:
    def __init__(self, max_messages: int = 10) -> None:
        self.max = max_messages
        self.woken: list[Entry] | None = None
        self.error: TcpmqError | None = None

    def wake(self, deliveries: list[Entry]) -> None:
        assert self.woken is None, "woken twice"
        self.woken = deliveries

    def fail(self, error: TcpmqError) -> None:
        self.error = error


def make_broker(**limits: int | float) -> Broker:
    broker = Broker(Limits(**limits))  # type: ignore[arg-type]
    broker.create_channel("ch", "alice", 0.0, public=True)
    return broker


def publish(broker: Broker, *values: object, now: float = 0.0) -> list[int]:
    datas = [orjson.dumps(v) for v in values]
    ids, _ = broker.publish("ch", datas, PUBLISHER, 1.0, now, "alice", False)
    return ids


def ids_of(deliveries: list[Entry]) -> list[int]:
    return [d.id for d in deliveries]


def test_publish_fans_out_the_same_encoded_message() -> None:
    broker = make_broker()
    q1, _ = broker.subscribe("ch", "q1", "alice", None, 0.0)
    q2, _ = broker.subscribe("ch", "q2", "bob", None, 0.0)
    assert publish(broker, "a", "b") == [1, 2]
    first = broker.pull(q1, 10, now=0.0)
    second = broker.pull(q2, 10, now=0.0)
    assert ids_of(first) == ids_of(second) == [1, 2]
    # Encoded once: both queues deliver the very same bytes object.
    assert first[0].head is second[0].head
    assert orjson.loads(first[0].head + b"1}")["data"] == "a"


def test_redelivery_after_ack_timeout_keeps_publish_order() -> None:
    broker = make_broker()
    queue, _ = broker.subscribe("ch", "q", "alice", 5.0, 0.0)
    publish(broker, *range(6))
    assert ids_of(broker.pull(queue, 3, now=0.0)) == [1, 2, 3]
    broker.ack(queue, [2], now=1.0)
    assert broker.next_deadline() == 5.0
    assert broker.expire(4.99) == 0
    assert broker.expire(5.0) == 2
    again = broker.pull(queue, 10, now=6.0)
    assert ids_of(again) == [1, 3, 4, 5, 6]
    assert [d.attempts for d in again] == [2, 2, 1, 1, 1]


def test_nack_returns_messages_ahead_of_later_ones_in_id_order() -> None:
    broker = make_broker()
    queue, _ = broker.subscribe("ch", "q", "alice", None, 0.0)
    publish(broker, *range(5))
    broker.pull(queue, 4, now=0.0)
    assert broker.nack(queue, [3, 99], now=0.0) == (1, [99])
    assert broker.nack(queue, [1], now=0.0) == (1, [])
    assert ids_of(broker.pull(queue, 10, now=0.0)) == [1, 3, 5]


def test_ack_reports_unknown_ids_and_is_idempotent() -> None:
    broker = make_broker()
    queue, _ = broker.subscribe("ch", "q", "alice", None, 0.0)
    publish(broker, "x")
    broker.pull(queue, 1, now=0.0)
    assert broker.ack(queue, [1, 2], now=0.0) == (1, [2])
    assert broker.ack(queue, [1], now=0.0) == (0, [1])
    assert broker.expire(1e9) == 0


def test_waiters_are_served_in_order_and_only_with_what_is_ready() -> None:
    broker = make_broker()
    queue, _ = broker.subscribe("ch", "q", "alice", None, 0.0)
    first, second = RecordingWaiter(2), RecordingWaiter(2)
    broker.wait(queue, first)
    broker.wait(queue, second)
    publish(broker, "a", "b", "c")
    assert first.woken is not None and ids_of(first.woken) == [1, 2]
    assert second.woken is not None and ids_of(second.woken) == [3]
    assert queue.depth == 0 and queue.inflight_count == 3


def test_expiry_wakes_a_waiter() -> None:
    broker = make_broker()
    queue, _ = broker.subscribe("ch", "q", "alice", 1.0, 0.0)
    publish(broker, "a")
    broker.pull(queue, 1, now=0.0)
    waiter = RecordingWaiter()
    broker.wait(queue, waiter)
    broker.expire(1.0)
    assert waiter.woken is not None and [d.attempts for d in waiter.woken] == [2]


def test_deleting_a_queue_fails_its_waiters() -> None:
    broker = make_broker()
    queue, _ = broker.subscribe("ch", "q", "alice", None, 0.0)
    waiter = RecordingWaiter()
    broker.wait(queue, waiter)
    broker.delete_channel("ch")
    assert isinstance(waiter.error, NotFound)
    with pytest.raises(NotFound):
        broker.queue("ch", "q")


def test_max_inflight_holds_messages_back_until_acks() -> None:
    broker = make_broker(max_inflight=2)
    queue, _ = broker.subscribe("ch", "q", "alice", None, 0.0)
    publish(broker, "a", "b", "c")
    assert ids_of(broker.pull(queue, 10, now=0.0)) == [1, 2]
    assert broker.pull(queue, 10, now=0.0) == []
    waiter = RecordingWaiter()
    broker.wait(queue, waiter)
    broker.ack(queue, [1], now=0.0)
    assert waiter.woken is not None and ids_of(waiter.woken) == [3]


def test_pull_reply_stays_within_a_frame_but_returns_at_least_one() -> None:
    broker = make_broker(max_frame_bytes=2000)
    queue, _ = broker.subscribe("ch", "q", "alice", None, 0.0)
    publish(broker, "x" * 900, "y" * 900, "z" * 1600)
    assert ids_of(broker.pull(queue, 10, now=0.0)) == [1]
    assert ids_of(broker.pull(queue, 10, now=0.0)) == [2]
    assert ids_of(broker.pull(queue, 10, now=0.0)) == [3]


def test_full_queue_refuses_the_whole_batch_everywhere() -> None:
    broker = make_broker(max_queue_messages=3)
    roomy, _ = broker.subscribe("ch", "roomy", "alice", None, 0.0)
    full, _ = broker.subscribe("ch", "full", "bob", None, 0.0)
    publish(broker, 1, 2)
    broker.pull(roomy, 10, now=0.0)
    with pytest.raises(LimitExceeded) as caught:
        publish(broker, 3, 4)
    assert caught.value.details == {"limit": "max_queue_messages", "max": 3}
    assert roomy.depth == 0 and full.depth == 2
    # Refused publishes use no ids.
    assert publish(broker, 3) == [3]


def test_subscribe_is_idempotent_for_the_owner_only() -> None:
    broker = make_broker()
    queue, created = broker.subscribe("ch", "q", "alice", None, 0.0)
    assert created and queue.ack_timeout == 30.0
    again, created = broker.subscribe("ch", "q", "alice", 2.5, 0.0)
    assert again is queue and not created and queue.ack_timeout == 2.5
    with pytest.raises(Forbidden):
        broker.subscribe("ch", "q", "bob", None, 0.0)
    with pytest.raises(AlreadyExists):
        broker.create_channel("ch", "bob", 0.0, public=True)


def test_deleting_a_user_drops_its_queues_and_hands_its_channels_on() -> None:
    broker = make_broker()
    broker.create_channel("alices", "alice", 0.0, public=True)
    broker.subscribe("ch", "a", "alice", None, 0.0)
    broker.subscribe("ch", "b", "bob", None, 0.0)
    assert broker.delete_user("alice", "root") == 1
    assert list(broker.channel("ch").queues) == ["b"]
    assert broker.channel("alices").owner == "root"
    assert broker.channel("ch").owner == "root"


def test_a_shorter_ack_timeout_expires_new_deliveries_first() -> None:
    broker = make_broker()
    queue, _ = broker.subscribe("ch", "q", "alice", 60.0, 0.0)
    publish(broker, "early", "late", "later")
    broker.pull(queue, 1, now=0.0)
    broker.subscribe("ch", "q", "alice", 0.5, 0.0)
    broker.pull(queue, 1, now=1.0)
    assert broker.next_deadline() == 1.5
    assert broker.expire(1.5) == 1
    assert ids_of(broker.pull(queue, 5, now=2.0)) == [2, 3]
    assert broker.ack(queue, [3], now=2.1) == (1, [])
    # Id 2 expires again at 2.5; id 1 keeps its 60 s deadline.
    assert broker.expire(59.0) == 1
    assert ids_of(broker.pull(queue, 5, now=59.0)) == [2]
    # Acks find deliveries in every lane.
    assert broker.ack(queue, [1, 2], now=59.0) == (2, [])
    assert broker.expire(1e9) == 0 and queue.inflight_count == 0


# -- what a stored message may cost -------------------------------------------


def test_a_message_too_large_for_a_pull_reply_once_stored_is_refused() -> None:
    broker = make_broker(max_frame_bytes=2000)
    queue, _ = broker.subscribe("ch", "q", "alice", None, 0.0)
    # 1e15 is stored as 1000000000000000.0: the data grows 4.5 times.
    with pytest.raises(LimitExceeded) as caught:
        publish(broker, "fits", [1e15] * 100)
    assert caught.value.details == {"limit": "max_frame_bytes", "max": 2000}
    assert "message 1 takes" in caught.value.message
    assert queue.depth == 0 and publish(broker, "fits") == [1]


def test_a_fanned_out_body_is_stored_once_and_counted_once() -> None:
    broker = make_broker()
    queues = [broker.subscribe("ch", f"q{i}", "alice", None, 0.0)[0] for i in range(3)]
    publish(broker, "x" * 1000)
    head = queues[0].fresh[0]
    assert all(queue.fresh[0] is head for queue in queues)  # one bytes object
    assert broker.memory == pytest.approx(len(head) + BODY_OVERHEAD + 3 * SLOT_BYTES)
    broker.pull(queues[0], 1, now=0.0)  # paid for at publish
    assert broker.memory == pytest.approx(len(head) + BODY_OVERHEAD + 3 * SLOT_BYTES)
    broker.ack(queues[0], [1], now=0.0)
    broker.purge(queues[1])
    assert broker.memory == pytest.approx((len(head) + BODY_OVERHEAD) / 3 + SLOT_BYTES)
    broker.delete_queue("ch", "q2")
    assert broker.memory == pytest.approx(0.0)


def test_memory_returns_to_zero_when_the_queue_count_changed_between_publishes() -> None:
    broker = make_broker()
    first, _ = broker.subscribe("ch", "first", "alice", None, 0.0)
    publish(broker, "a" * 100, "b" * 10)
    second, _ = broker.subscribe("ch", "second", "alice", None, 0.0)
    publish(broker, "c" * 50)
    assert broker.memory > 0
    for queue in (second, first):
        deliveries = broker.pull(queue, 10, now=0.0)
        broker.ack(queue, [d.id for d in deliveries], now=0.0)
    assert broker.memory == pytest.approx(0.0, abs=1e-6)


def test_in_flight_messages_count_against_the_queue_limits() -> None:
    broker = make_broker(max_queue_messages=2, max_queue_bytes=10_000)
    queue, _ = broker.subscribe("ch", "q", "alice", None, 0.0)
    publish(broker, 1, 2)
    broker.pull(queue, 10, now=0.0)
    with pytest.raises(LimitExceeded) as caught:
        publish(broker, 3)
    assert caught.value.details["limit"] == "max_queue_messages"
    broker.ack(queue, [1], now=0.0)
    assert publish(broker, 3) == [3]

    broker = make_broker(max_queue_bytes=300)
    queue, _ = broker.subscribe("ch", "q", "alice", None, 0.0)
    publish(broker, "x" * 100)
    broker.pull(queue, 10, now=0.0)
    with pytest.raises(LimitExceeded) as caught:
        publish(broker, "y" * 100)
    assert caught.value.details["limit"] == "max_queue_bytes"
    broker.ack(queue, [1], now=0.0)
    assert queue.held_bytes == 0
    assert publish(broker, "y" * 100) == [2]


def test_the_memory_budget_refuses_a_publish_whole() -> None:
    broker = make_broker(max_memory_bytes=200_000)
    for i in range(10):
        broker.subscribe("ch", f"q{i}", "alice", None, 0.0)
    publish(broker, *["x" * 1000] * 50)  # ~55 KB of bodies counted once, 96 KB of slots
    with pytest.raises(LimitExceeded) as caught:
        publish(broker, *["x" * 1000] * 50)
    assert caught.value.details == {"limit": "max_memory_bytes", "max": 200_000}
    assert all(queue.depth == 50 for queue in broker.channels["ch"].queues.values())


def test_max_queues_per_user_counts_across_channels_and_frees_on_delete() -> None:
    broker = make_broker(max_queues_per_user=2)
    broker.create_channel("other", "alice", 0.0, public=True)
    broker.subscribe("ch", "a", "alice", None, 0.0)
    broker.subscribe("other", "b", "alice", None, 0.0)
    with pytest.raises(LimitExceeded) as caught:
        broker.subscribe("other", "c", "alice", None, 0.0)
    assert caught.value.details == {"limit": "max_queues_per_user", "max": 2}
    broker.subscribe("other", "c", "bob", None, 0.0)  # another user's count
    broker.subscribe("ch", "a", "alice", None, 0.0)  # an existing queue: no new one
    broker.delete_channel("other")
    broker.subscribe("ch", "c", "alice", None, 0.0)
    assert broker.queues_by_owner == {"alice": 2}


def test_a_timeout_lowered_again_after_raising_it_gets_a_lane_of_its_own() -> None:
    # Found by the model test (test_model.py): short, then long, then short
    # again. The second short delivery must not queue behind the long one.
    broker = make_broker()
    queue, _ = broker.subscribe("ch", "q", "alice", 0.5, 0.0)
    publish(broker, "a", "b")
    broker.pull(queue, 1, now=0.0)
    assert broker.expire(0.5) == 1
    broker.subscribe("ch", "q", "alice", 60.0, 0.0)
    assert ids_of(broker.pull(queue, 1, now=1.0)) == [1]  # deadline 61
    broker.subscribe("ch", "q", "alice", 0.5, 0.0)
    assert ids_of(broker.pull(queue, 1, now=2.0)) == [2]  # deadline 2.5
    assert broker.expire(2.5) == 1
    assert [(d.id, d.attempts) for d in broker.pull(queue, 5, now=3.0)] == [(2, 2)]
