"""The Kafka start-up check speaks Kafka: a real broker passes, a port that is not a broker is named."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from appliance.jobs import JobsError, check_brokers


def test_a_real_broker_answers_the_handshake(kafka_broker: str) -> None:
    check_brokers([kafka_broker])


@pytest.fixture
def http_port() -> Iterator[int]:
    """A loopback server that answers like a web server, whatever it is sent."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(5)
    srv.close()


def test_a_port_that_is_not_a_broker_is_named(http_port: int) -> None:
    with pytest.raises(JobsError, match=rf"jobs.brokers: no broker answers: 127.0.0.1:{http_port} "
                                        r"\(answered, but not as a Kafka broker\)"):
        check_brokers([f"127.0.0.1:{http_port}"], timeout_s=2)


def test_the_first_broker_that_answers_is_enough(kafka_broker: str, http_port: int) -> None:
    check_brokers([f"127.0.0.1:{http_port}", kafka_broker])


def test_a_closed_port_and_a_bad_address_are_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(JobsError, match=rf"127.0.0.1:{closed} \("):
        check_brokers([f"127.0.0.1:{closed}"], timeout_s=2)
    with pytest.raises(JobsError, match="is not host:port"):
        check_brokers(["nohost"])
