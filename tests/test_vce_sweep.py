"""The simulation engine's message sweep asks only nodes with an undelivered message."""

from __future__ import annotations

import threading
from queue import Queue
from types import SimpleNamespace

from flwr.server.superlink.fleet.vce import vce_api

from fedspine.flower import vce_sweep


def _message(dst: int, delivered: str = "") -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=dst, delivered_at=delivered))


class _FakeState:
    """The part of Flower's in-memory link state the sweep touches; records who was asked."""

    def __init__(self, messages: dict[str, SimpleNamespace], stop: threading.Event) -> None:
        self.message_ins_store = messages
        self.lock = threading.RLock()
        self.asked: list[int] = []
        self.stop = stop

    def get_message_ins(self, node_id: int, limit: int | None) -> list:
        self.asked.append(node_id)
        found = [
            m
            for m in self.message_ins_store.values()
            if m.metadata.dst_node_id == node_id and m.metadata.delivered_at == ""
        ][:limit]
        for msg in found:
            msg.metadata.delivered_at = "now"
        self.stop.set()  # one sweep is enough for the test
        return found


def test_only_nodes_with_undelivered_messages_are_listed_in_engine_order() -> None:
    store = {"a": _message(30), "b": _message(10, delivered="t"), "c": _message(20)}
    assert vce_sweep.nodes_with_undelivered(store, [10, 20, 30, 40]) == [20, 30]
    assert vce_sweep.nodes_with_undelivered({}, [10, 20]) == []


def test_the_sweep_delivers_through_get_message_ins_and_asks_no_idle_node() -> None:
    stop = threading.Event()
    state = _FakeState({"m1": _message(7), "m2": _message(3)}, stop)
    nodes_mapping = {node: partition for partition, node in enumerate(range(1, 1001))}
    queue: Queue = Queue()
    vce_sweep.add_pending_messages_to_queue(state, queue, nodes_mapping, stop)
    assert state.asked == [3, 7]  # 2 calls, not 1,000; in the engine's partition order
    delivered = [queue.get_nowait().metadata.dst_node_id for _ in range(queue.qsize())]
    assert delivered == [3, 7]
    assert all(m.metadata.delivered_at for m in state.message_ins_store.values())


def test_a_state_without_an_in_memory_store_keeps_flowers_sweep(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(vce_sweep, "_FLOWER_SWEEP", lambda *args: calls.append(args))
    state = SimpleNamespace()  # e.g. a database-backed link state
    vce_sweep.add_pending_messages_to_queue(state, Queue(), {1: 0}, threading.Event())
    assert len(calls) == 1 and calls[0][0] is state


def test_install_replaces_the_engine_sweep(monkeypatch) -> None:
    monkeypatch.setattr(vce_api, "add_messages_to_queue", vce_api.add_messages_to_queue)
    vce_sweep.install()
    assert vce_api.add_messages_to_queue is vce_sweep.add_pending_messages_to_queue
