"""The wire benchmark's byte counting: the relay counts exactly what passes, and rounds are differences."""

from __future__ import annotations

import socket
import threading

from fedelta.simulations.bench_wire import Relay, table


def _echo_server() -> tuple[socket.socket, int]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            while data := connection.recv(4096):
                connection.sendall(data * 2)

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


def test_the_relay_counts_every_byte_each_way():
    listener, port = _echo_server()
    relay = Relay(("127.0.0.1", port))
    with socket.create_connection(("127.0.0.1", relay.port)) as client:
        received = 0
        for size in (1000, 30_000, 7):
            client.sendall(b"x" * size)
            expected = received + 2 * size
            while received < expected:
                received += len(client.recv(65536))
    listener.close()
    up, down = relay.counts()
    assert up == 31_007
    assert down == received == 62_014


def test_round_bytes_are_differences_of_readings_taken_at_each_metrics_row():
    rows = [{"round": 0, "upload_bytes": 0, "downlink_bytes": 0, "sites": 0},
            {"round": 1, "upload_bytes": 300, "downlink_bytes": 1000, "sites": 2},
            {"round": 2, "upload_bytes": 200, "downlink_bytes": 600, "sites": 1}]
    readings = [[(0, 0), (0, 0)], [(10, 20), (11, 21)], [(510, 1320), (261, 621)], [(610, 1620), (262, 921)]]
    result = table(rows, readings, ["a", "b"])
    assert [(r["round"], r["site"], r["wire_up"], r["wire_down"]) for r in result] == [
        (1, "a", 500, 1300), (1, "b", 250, 600), (2, "a", 100, 300), (2, "b", 1, 300)]
    assert [(r["payload_up"], r["payload_down"]) for r in result] == [(150, 500), (150, 500), (200, 300), (200, 300)]
