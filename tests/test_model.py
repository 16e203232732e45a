"""The broker against a model: a hypothesis state machine drives a real server
through the client library and checks every answer against a few dicts.

The model is what protocol.md promises, written as plainly as possible: a
channel hands out ids from 1 and appends each publish to every queue's ready
list; a pull takes the lowest ready ids and puts them in flight with the next
attempt; ack forgets in-flight ids, nack and ack timeout make them ready again
(their next delivery one attempt higher); purge drops the ready ones; a
restart of the durable store makes every in-flight message ready again and
keeps everything else. After every step the queues' `depth`, `inflight` and
`redeliveries` must be the model's.

Ack timeouts: every queue has a long one (nothing expires by itself during a
run, so the model stays exact), and the `expire` rule is the only place a
message times out. It sets the smallest ack timeout on the queue, pulls every
ready message (so nothing else can answer a pull), sets the long one back,
and then long-polls: a waiting pull is answered when the expired messages
become ready again, which is the event awaited, bounded by `EXPIRY_WAIT`. The
messages come back as second (or later) deliveries, in id order. (Lowering,
raising and lowering a queue's timeout this way found a bug: deliveries made
under the second short timeout waited behind the long ones; see test_broker.)

The state machine runs its own uvloop: each rule runs the client (and the
in-process server) until its request is answered. TCPMQ_SLOW=1 runs many more
examples and longer ones.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conftest import ADMIN_PASSWORD_HASH, make_config
from tcpmq.client import Client, connect
from tcpmq.errors import AlreadyExists, NotFound
from tcpmq.server import Server

CHANNELS = ("a", "b")
QUEUES = ("q1", "q2")
LONG_ACK_TIMEOUT = 3600.0
SHORT_ACK_TIMEOUT = 0.01  # the server's min_ack_timeout in these runs
# The long-poll that waits for expired messages gives up after this: far
# beyond the short ack timeout, so reaching it means they never came back.
EXPIRY_WAIT = 10.0
SLOW = os.environ.get("TCPMQ_SLOW") == "1"
# Rules that wipe state (deletes) or cost a restart act when this draws 0:
# hypothesis picks rules evenly, and they would leave the queues mostly empty.
RARE = st.integers(min_value=0, max_value=3)


@dataclass
class QueueModel:
    ready: list[int] = field(default_factory=list)  # kept sorted: delivery order is id order
    inflight: dict[int, int] = field(default_factory=dict)  # id -> attempt of its delivery
    delivered: dict[int, int] = field(default_factory=dict)  # ready id -> deliveries so far

    def take(self, count: int) -> list[tuple[int, int]]:
        """Deliver the first `count` ready ids; returns (id, attempt) pairs."""
        taken, self.ready = self.ready[:count], self.ready[count:]
        pairs = [(mid, self.delivered.pop(mid, 0) + 1) for mid in taken]
        self.inflight.update(pairs)
        return pairs

    def requeue(self, mid: int) -> None:
        self.delivered[mid] = self.inflight.pop(mid)
        self.ready.append(mid)
        self.ready.sort()


@dataclass
class ChannelModel:
    next_id: int = 1
    queues: dict[str, QueueModel] = field(default_factory=dict)
    data: dict[int, int] = field(default_factory=dict)


class BrokerMachine(RuleBasedStateMachine):
    store = "log"
    base: Path = Path(".")

    def __init__(self) -> None:
        super().__init__()
        self.loop = uvloop.new_event_loop()
        self.data_dir = Path(tempfile.mkdtemp(dir=self.base))
        self.server: Server | None = None
        self.client: Client | None = None
        self.channels: dict[str, ChannelModel] = {}
        self.next_value = 0
        self.run(self._start())

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(awaitable)

    async def _start(self) -> None:
        config = make_config(self.data_dir, min_ack_timeout=SHORT_ACK_TIMEOUT)
        self.server = Server(config, admin_password_hash=ADMIN_PASSWORD_HASH)
        await self.server.start()
        url = f"tcpmq://{self.server.host}:{self.server.port}"
        self.client = await connect(url, token=self.server.mint_token("admin"))

    async def _stop(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.server is not None:
            await self.server.stop()
            self.server = None

    def teardown(self) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.close()

    @property
    def api(self) -> Client:
        assert self.client is not None
        return self.client

    def queue(self, channel: str, queue: str) -> QueueModel | None:
        model = self.channels.get(channel)
        return None if model is None else model.queues.get(queue)

    def queues_now(self) -> list[tuple[str, str]]:
        return sorted((c, q) for c, model in self.channels.items() for q in model.queues)

    def pick_queue(self, data: st.DataObject) -> tuple[str, str, QueueModel]:
        channel, queue = data.draw(st.sampled_from(self.queues_now()), label="queue")
        return channel, queue, self.channels[channel].queues[queue]

    # -- channels and queues --------------------------------------------------

    @initialize()
    def start_with_a_queue(self) -> None:
        # Most rules need a queue: start with one instead of waiting for one.
        self.create_channel_named(CHANNELS[0])
        self.run(self.api.subscribe(CHANNELS[0], QUEUES[0], ack_timeout=LONG_ACK_TIMEOUT))
        self.channels[CHANNELS[0]].queues[QUEUES[0]] = QueueModel()

    @precondition(lambda self: len(self.channels) < len(CHANNELS))
    @rule(data=st.data())
    def create_channel(self, data: st.DataObject) -> None:
        missing = [name for name in CHANNELS if name not in self.channels]
        self.create_channel_named(data.draw(st.sampled_from(missing), label="channel"))

    def create_channel_named(self, name: str) -> None:
        info = self.run(self.api.channel_create(name))
        assert (info.name, info.published, info.queue_count, info.depth) == (name, 0, 0, 0)
        self.channels[name] = ChannelModel()

    @precondition(lambda self: self.channels)
    @rule(data=st.data(), roll=RARE)
    def delete_channel(self, data: st.DataObject, roll: int) -> None:
        if roll:
            return
        name = data.draw(st.sampled_from(sorted(self.channels)), label="channel")
        self.run(self.api.channel_delete(name))
        del self.channels[name]

    @precondition(lambda self: self.channels)
    @rule(data=st.data(), queue=st.sampled_from(QUEUES))
    def subscribe(self, data: st.DataObject, queue: str) -> None:
        channel = data.draw(st.sampled_from(sorted(self.channels)), label="channel")
        model = self.channels[channel]
        result = self.run(self.api.subscribe(channel, queue, ack_timeout=LONG_ACK_TIMEOUT))
        assert result.created == (queue not in model.queues)
        model.queues.setdefault(queue, QueueModel())

    @precondition(lambda self: self.queues_now())
    @rule(data=st.data(), roll=RARE)
    def delete_queue(self, data: st.DataObject, roll: int) -> None:
        if roll:
            return
        channel, queue, _ = self.pick_queue(data)
        self.run(self.api.queue_delete(channel, queue))
        del self.channels[channel].queues[queue]

    @rule(
        channel=st.sampled_from(CHANNELS),
        queue=st.sampled_from(QUEUES),
        op=st.sampled_from(["publish", "subscribe", "delete", "pull", "peek", "ack", "purge"]),
    )
    def refused(self, channel: str, queue: str, op: str) -> None:
        """An op on a channel or queue that does not exist, or a channel created twice:
        refused, and nothing changes."""
        if op in ("publish", "subscribe") and channel in self.channels:
            with pytest.raises(AlreadyExists):
                self.run(self.api.channel_create(channel))
            return
        if self.queue(channel, queue) is not None:
            return
        api = self.api
        calls = {
            "publish": lambda: api.publish(channel, 0),
            "subscribe": lambda: api.subscribe(channel, queue),
            "delete": lambda: api.queue_delete(channel, queue),
            "pull": lambda: api.pull(channel, queue, max=3),
            "peek": lambda: api.peek(channel, queue),
            "ack": lambda: api.ack(channel, [1], queue=queue),
            "purge": lambda: api.queue_purge(channel, queue),
        }
        with pytest.raises(NotFound):
            self.run(calls[op]())

    # -- messages -------------------------------------------------------------

    @precondition(lambda self: self.channels)
    @rule(data=st.data(), count=st.integers(min_value=1, max_value=5))
    def publish(self, data: st.DataObject, count: int) -> None:
        channel = data.draw(st.sampled_from(sorted(self.channels)), label="channel")
        values = list(range(self.next_value, self.next_value + count))
        self.next_value += count
        if count == 1:
            result = self.run(self.api.publish(channel, values[0]))
        else:
            result = self.run(self.api.publish_batch(channel, values))
        model = self.channels[channel]
        ids = list(range(model.next_id, model.next_id + count))
        assert result.message_ids == ids
        assert result.queues == len(model.queues)
        model.next_id += count
        model.data.update(zip(ids, values, strict=True))
        for queue in model.queues.values():
            queue.ready.extend(ids)  # new ids are the highest: still sorted

    @precondition(lambda self: self.queues_now())
    @rule(data=st.data(), count=st.integers(min_value=1, max_value=6))
    def pull(self, data: st.DataObject, count: int) -> None:
        channel, queue, model = self.pick_queue(data)
        messages = self.run(self.api.pull(channel, queue, max=count))
        expected = model.take(count)
        assert [(m.id, m.attempt) for m in messages] == expected
        values = self.channels[channel].data
        assert [m.data for m in messages] == [values[mid] for mid, _ in expected]

    @precondition(lambda self: self.queues_now())
    @rule(data=st.data(), count=st.integers(min_value=1, max_value=6))
    def peek(self, data: st.DataObject, count: int) -> None:
        channel, queue, model = self.pick_queue(data)
        messages = self.run(self.api.peek(channel, queue, max=count))
        expected = [(mid, model.delivered.get(mid, 0) + 1) for mid in model.ready[:count]]
        assert [(m.id, m.attempt) for m in messages] == expected

    @precondition(lambda self: self.queues_now())
    @rule(
        data=st.data(),
        picks=st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=6, unique=True),
        nack=st.booleans(),
    )
    def ack_or_nack(self, data: st.DataObject, picks: list[int], nack: bool) -> None:
        """Ack or nack a mix of in-flight ids and ids that are not in flight."""
        channel, queue, model = self.pick_queue(data)
        inflight = sorted(model.inflight)
        # Small picks name in-flight ids; the others, ids that may be anything else.
        ids = list(dict.fromkeys(inflight[p] if p < len(inflight) else p + 1 for p in picks))
        known = [mid for mid in ids if mid in model.inflight]
        if nack:
            nacked = self.run(self.api.nack(channel, ids, queue=queue))
            assert (nacked.requeued, sorted(nacked.unknown)) == (len(known), _others(ids, known))
            for mid in known:
                model.requeue(mid)
        else:
            acked = self.run(self.api.ack(channel, ids, queue=queue))
            assert (acked.acked, sorted(acked.unknown)) == (len(known), _others(ids, known))
            for mid in known:
                del model.inflight[mid]

    @precondition(lambda self: self.queues_now())
    @rule(data=st.data())
    def purge(self, data: st.DataObject) -> None:
        channel, queue, model = self.pick_queue(data)
        assert self.run(self.api.queue_purge(channel, queue)) == len(model.ready)
        for mid in model.ready:
            model.delivered.pop(mid, None)
        model.ready.clear()

    @precondition(lambda self: self.queues_now())
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        """Let the queue's ready messages time out once (see the module docstring)."""
        channel, queue, model = self.pick_queue(data)
        if not 1 <= len(model.ready) <= 50:
            return
        api = self.api
        self.run(api.subscribe(channel, queue, ack_timeout=SHORT_ACK_TIMEOUT))
        first = self.run(api.pull(channel, queue, max=50))
        expected = model.take(len(model.ready))
        assert [(m.id, m.attempt) for m in first] == expected
        self.run(api.subscribe(channel, queue, ack_timeout=LONG_ACK_TIMEOUT))
        for mid, _ in expected:
            model.requeue(mid)  # timed out
        back: list[tuple[int, int]] = []
        while len(back) < len(expected):
            batch = self.run(api.pull(channel, queue, max=50, wait=EXPIRY_WAIT))
            assert batch, f"expired messages not back after {EXPIRY_WAIT} s"
            back.extend((m.id, m.attempt) for m in batch)
        assert back == model.take(len(expected))

    @precondition(lambda self: self.store == "log")
    @rule(roll=RARE)
    def restart(self, roll: int) -> None:
        """Stop the server and start it on the same data dir (the durable store only)."""
        if roll:
            return
        self.run(self._stop())
        self.run(self._start())
        for channel in self.channels.values():
            for queue in channel.queues.values():
                for mid in list(queue.inflight):
                    queue.requeue(mid)

    # -- invariants -------------------------------------------------------------

    @invariant()
    def counts_match(self) -> None:
        queues = self.run(self.api.queue_list())
        seen = {(q.channel, q.name): (q.depth, q.inflight, q.redeliveries) for q in queues}
        expected = {
            (name, queue_name): (len(q.ready), len(q.inflight), len(q.delivered))
            for name, channel in self.channels.items()
            for queue_name, q in channel.queues.items()
        }
        assert seen == expected
        channels = self.run(self.api.channel_list())
        assert sorted(c.name for c in channels) == sorted(self.channels)


def _others(ids: list[int], known: list[int]) -> list[int]:
    return sorted(set(ids) - set(known))


@pytest.mark.every_store
@pytest.mark.timeout(600 if SLOW else 60)
def test_broker_matches_its_model(store: str, tmp_path: Path) -> None:
    class Machine(BrokerMachine):
        pass

    Machine.store = store
    Machine.base = tmp_path
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=300 if SLOW else 12,
            stateful_step_count=100 if SLOW else 50,
            deadline=None,
        ),
    )
