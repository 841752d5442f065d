"""The advertised URL (pure) and the router's join answer, checked field by field."""

from __future__ import annotations

import pytest

from appliance.fleet.advertise import AdvertiseError, advertise_url
from appliance.fleet.join import JoinError, parse_answer

VAST = {"PUBLIC_IPADDR": "203.0.113.9", "VAST_TCP_PORT_8080": "41234", "VAST_TCP_PORT_22": "40022"}


def _url(host: str = "0.0.0.0", env: dict[str, str] | None = None, local: str | None = "10.1.2.3", **kw: str) -> str:
    return advertise_url(scheme="http", host=host, port=8080, env=env or {}, local_address=local, **kw)


def test_vast_ai_maps_the_daemons_port_to_its_public_one() -> None:
    assert _url(env=VAST) == "http://203.0.113.9:41234"
    assert advertise_url(scheme="https", host="0.0.0.0", port=22, env=VAST, local_address=None) == \
        "https://203.0.113.9:40022"
    with pytest.raises(AdvertiseError, match=r"server.port 8081 is not mapped .*no VAST_TCP_PORT_8081"):
        advertise_url(scheme="http", host="0.0.0.0", port=8081, env=VAST, local_address=None)


def test_explicit_then_configured_then_computed() -> None:
    assert _url(env=VAST, explicit="https://box7.example:9443/") == "https://box7.example:9443"
    assert _url(env=VAST, configured="http://198.51.100.4:8080") == "http://198.51.100.4:8080"
    assert _url() == "http://10.1.2.3:8080"  # bound to every interface: the address toward the router
    assert _url(host="192.0.2.10") == "http://192.0.2.10:8080"
    assert _url(host="fd00::5") == "http://[fd00::5]:8080"
    with pytest.raises(AdvertiseError, match=r"--advertise-url: must be http\(s\)://host:port"):
        _url(explicit="box7.example:9443")


def test_a_computed_loopback_url_is_refused_but_an_explicit_one_is_kept() -> None:
    with pytest.raises(AdvertiseError, match=r"http://127.0.0.1:8080 is a loopback address .* --advertise-url"):
        _url(host="127.0.0.1")
    with pytest.raises(AdvertiseError, match="loopback"):
        _url(local="127.0.0.1")
    assert _url(host="127.0.0.1", explicit="http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    with pytest.raises(AdvertiseError, match="cannot tell this host's address"):
        _url(local=None)


GOOD = {"store_url": "postgresql://fleet@db.example/appliance",
        "jobs": {"backend": "kafka", "brokers": ["k1.example:9092"], "topic_prefix": "fleet-jobs.", "group": "gpu"},
        "fleet_token": "tok", "router_url": "https://router.example:8443/"}


def test_the_join_answer_is_checked_field_by_field() -> None:
    answer = parse_answer(GOOD)
    assert (answer.store_url, answer.jobs["brokers"], answer.router_url) == (
        "postgresql://fleet@db.example/appliance", ["k1.example:9092"], "https://router.example:8443")
    for bad, field in (({"store_url": "sqlite:///x"}, "store_url"), ({"fleet_token": ""}, "fleet_token"),
                       ({"jobs": {"backend": "kafka", "brokers": []}}, "jobs.brokers"),
                       ({"jobs": {"backend": "rabbit"}}, "jobs.backend"), ({"router_url": "x"}, "router_url")):
        with pytest.raises(JoinError, match=f"the router's answer: {field}:"):
            parse_answer({**GOOD, **bad})
    with pytest.raises(JoinError, match="must be a JSON object"):
        parse_answer(["no"])
