"""The server processes a round's replies in device order, whatever order they arrive in."""

from types import SimpleNamespace

from fedspine.flower.strategy import FedspineStrategy


def _reply(node_id: int) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(src_node_id=node_id))


def test_replies_are_processed_in_device_id_order_not_arrival_order():
    # Flower node ids are random and unrelated to device ids
    devices = {9001: SimpleNamespace(device_id=2), 17: SimpleNamespace(device_id=0)}
    devices[4242] = SimpleNamespace(device_id=1)
    server = SimpleNamespace(devices=devices)
    for arrival in ([9001, 17, 4242], [4242, 9001, 17], [17, 4242, 9001]):
        ordered = FedspineStrategy.in_device_order(server, [_reply(n) for n in arrival])
        assert [m.metadata.src_node_id for m in ordered] == [17, 4242, 9001]
