"""Authentication against a running daemon: Bearer keys on /v1 and /api, admin scope, revocation seen
by the running daemon, the per-key rate limit, open mode on loopback without keys, and the refusal
to listen on a non-loopback address without a key. Also the `appliance keys` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from .conftest import ROOT, Gateway, launch, vllm_engine, wait_until
from .conftest import free_port as _free_port

RATE = 20


def text_only(**server: Any) -> dict[str, Any]:
    return {"server": server,
            "engines": {"vllm": vllm_engine(_free_port(), gpu_memory_utilization=0.05, sleep_mode=False)},
            "models": {"qwen-test": {"engine": "vllm", "modality": "text", "vram_gb": 1.5}}}


@pytest.fixture(scope="module")
def gateway(module_tmp: Path) -> Iterator[Gateway]:
    gw = launch(module_tmp / "keyed", text_only(rate_limit_per_minute=RATE),
                keys={"user": False, "admin": True, "burst": False})
    try:
        yield gw
    finally:
        gw.stop()


def keys_cli(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("APPLIANCE_STATE_DIR", None)
    return subprocess.run([sys.executable, "-m", "appliance", "keys", *args, "--config", str(gw.tmp / "config.toml")],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def envelope(body: bytes) -> dict[str, Any]:
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return dict(err)


def test_health_is_open(gateway: Gateway) -> None:
    assert gateway.request("GET", "/health", key=None).status == 200


@pytest.mark.parametrize("path", ["/v1/models", "/api/status"])
def test_missing_key_is_401(gateway: Gateway, path: str) -> None:
    resp = gateway.request("GET", path, key=None)
    assert resp.status == 401
    err = envelope(resp.body)
    assert err["type"] == "authentication_error" and "Bearer" in err["message"]


@pytest.mark.parametrize("header", ["Bearer sk-app-00000000-wrong", "Bearer nonsense", "Basic dXNlcjpwYXNz",
                                    "Bearer "])
def test_wrong_or_malformed_key_is_401(gateway: Gateway, header: str) -> None:
    resp = gateway.request("GET", "/v1/models", key=None, headers={"Authorization": header})
    assert resp.status == 401 and envelope(resp.body)["code"] == "invalid_api_key"


def test_right_secret_for_another_id_is_401(gateway: Gateway) -> None:
    user = gateway.keys["user"]
    admin_id = gateway.keys["admin"].split("-")[2]
    forged = f"sk-app-{admin_id}-{user.split('-', 3)[3]}"
    assert gateway.request("GET", "/v1/models", key=forged).status == 401


def test_sdk_with_a_wrong_key_raises_authentication_error(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        gateway.client(key="sk-app-deadbeef-nope").models.list()


def test_user_key_reaches_v1_but_not_admin_routes(gateway: Gateway) -> None:
    assert gateway.request("GET", "/v1/models").status == 200
    assert gateway.request("GET", "/api/status").status == 200  # read-only status: any key
    for method, path in (("POST", "/api/engines/vllm/stop"), ("GET", "/api/usage"),
                         ("GET", "/api/engines/vllm/logs")):
        resp = gateway.request(method, path)
        assert resp.status == 403, path
        assert envelope(resp.body)["type"] == "permission_error"
    assert gateway.request("GET", "/api/usage", key="admin").status == 200
    assert gateway.request("GET", "/api/engines/vllm/logs", key="admin").status == 200


def test_revoked_key_is_refused_by_the_running_daemon(gateway: Gateway) -> None:
    created = keys_cli(gateway, "create", "--name", "temp")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    wait_until(lambda: gateway.request("GET", "/v1/models", key=key).status == 200, 5, "the new key to work")
    revoked = keys_cli(gateway, "revoke", "temp")
    assert revoked.returncode == 0 and "revoked 1 key" in revoked.stdout
    wait_until(lambda: gateway.request("GET", "/v1/models", key=key).status == 401, 5, "the revocation")
    assert "revoked" in envelope(gateway.request("GET", "/v1/models", key=key).body)["message"]


def test_keys_list_never_shows_secrets(gateway: Gateway) -> None:
    listed = keys_cli(gateway, "list")
    assert listed.returncode == 0
    assert "user" in listed.stdout and "admin" in listed.stdout
    assert all(secret.split("-", 3)[3] not in listed.stdout for secret in gateway.keys.values())
    missing = keys_cli(gateway, "revoke", "no-such-key")
    assert missing.returncode == 1 and "no live key" in missing.stderr


def test_rate_limit_per_key_is_429_with_retry_after(gateway: Gateway) -> None:
    statuses = [gateway.request("GET", "/v1/models", key="burst") for _ in range(RATE + 5)]
    limited = [r for r in statuses if r.status == 429]
    assert limited, [r.status for r in statuses]
    assert int(limited[0].headers["retry-after"]) >= 1
    assert envelope(limited[0].body)["code"] == "rate_limit_exceeded"
    assert gateway.request("GET", "/v1/models", key="user").status == 200  # other keys are not affected


def test_open_on_loopback_while_no_key_exists(tmp_path: Path) -> None:
    gw = launch(tmp_path, text_only())
    try:
        assert gw.request("GET", "/v1/models", key=None).status == 200
        assert gw.request("GET", "/v1/models", key="sk-anything").status == 200  # SDKs always send one
        assert gw.request("GET", "/api/status", key=None).status == 200
        out = gw.client(key="sk-anything").chat.completions.create(
            model="qwen-test", messages=[{"role": "user", "content": "open door"}], max_tokens=2)
        assert out.choices[0].message.content == "open door"
        # The first key closes the door (the running daemon notices within about a second).
        created = keys_cli(gw, "create", "--name", "first")
        assert created.returncode == 0
        wait_until(lambda: gw.request("GET", "/v1/models", key=None).status == 401, 5, "auth to be required")
        assert gw.request("GET", "/v1/models", key=created.stdout.strip()).status == 200
    finally:
        gw.stop()


def test_non_loopback_bind_without_a_key_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        f'[server]\nstate_dir = "{tmp_path / "state"}"\nport = {_free_port()}\n'
        '[gpu]\nprobe = "declared"\ndeclared_total_gb = 24\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("APPLIANCE_STATE_DIR", None)
    # 192.0.2.1 (TEST-NET-1) is not loopback; the daemon refuses before it would try to bind.
    out = subprocess.run([sys.executable, "-m", "appliance", "serve", "--config", str(tmp_path / "config.toml"),
                          "--host", "192.0.2.1"], capture_output=True, text=True, timeout=60, env=env, check=False)
    assert out.returncode == 2
    assert "refusing to listen on 192.0.2.1: no API key exists" in out.stderr
    assert "appliance keys create" in out.stderr
