"""The async jobs API: image, speech and whole chat requests queued durably, run later under the same
residency leases as synchronous requests, and read back by id.

Pieces: `submit` checks a job request and makes its row; `queue` (local, on the store) and `kafka`
(a topic per model, a consumer group shared by the boxes) hand queued jobs to this box's workers;
`runner` runs them through the gateway's own route handlers and settles each attempt in the store;
`api` is the HTTP face (`/v1/jobs`). The store's job table is the truth: a queue only says "look at
this job"; a claim in the store decides who runs it, so a job runs at least once and its result is
written once.
It must not be confused with `Appliance.bus`, the in-memory event bus.
"""

from __future__ import annotations

import socket
import struct

from ..config import Config
from ..store import Store
from .queue import JobQueue, LocalQueue


class JobsError(Exception):
    """The jobs backend is misconfigured or unreachable; one line naming the setting."""


API_VERSIONS_PROBE = struct.pack(">hhih", 18, 0, 0x41505031, 9) + b"appliance"  # ApiVersions v0, client id


def kafka_handshake(sock: socket.socket) -> str | None:
    """Ask the peer for its API versions (Kafka's first request of every client); None when it answered
    as a Kafka broker does (a size-prefixed response carrying our correlation id), else why not."""
    sock.sendall(struct.pack(">i", len(API_VERSIONS_PROBE)) + API_VERSIONS_PROBE)
    head = b""
    while len(head) < 8:
        chunk = sock.recv(8 - len(head))
        if not chunk:
            return "closed the connection without a Kafka answer"
        head += chunk
    size, correlation = struct.unpack(">ii", head)
    if correlation != 0x41505031 or not 4 <= size <= 1 << 20:
        return "answered, but not as a Kafka broker"
    return None


def check_brokers(brokers: list[str], timeout_s: float = 3.0) -> None:
    """Raise JobsError unless at least one broker answers Kafka's ApiVersions request (the start-up
    check: a wrong port, a web server or a database in the list is named now, not as a traceback later)."""
    problems: list[str] = []
    for broker in brokers:
        host, _, port = broker.rpartition(":")
        if not host or not port.isdigit():
            raise JobsError(f"jobs.brokers: {broker!r} is not host:port")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as sock:
                sock.settimeout(timeout_s)
                why = kafka_handshake(sock)
        except OSError as exc:
            why = str(exc.strerror or exc)
        if why is None:
            return
        problems.append(f"{broker} ({why})")
    raise JobsError(f"jobs.brokers: no broker answers: {', '.join(problems)}")


def build_queue(config: Config, store: Store, owner: str) -> JobQueue:
    """The configured queue backend; Kafka's client is imported only when it is selected."""
    if config.jobs.backend == "kafka":
        check_brokers(config.jobs.brokers)
        try:
            from .kafka import KafkaQueue
        except ImportError as exc:
            raise JobsError(f"jobs.backend: kafka needs aiokafka ({exc}): pip install 'appliance[full]'") from None
        return KafkaQueue(store, owner, config.jobs.brokers, config.jobs.topic_prefix, config.jobs.group,
                          partitions=config.jobs.partitions)
    return LocalQueue(store, owner, config.jobs.poll_s)
