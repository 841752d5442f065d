"""HAProxy's config from the template, and the runtime-API commands between two plans (pure), checked
by HAProxy itself where it matters (`haproxy -c`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from appliance.config import RouterConfig
from appliance.router.commands import transition
from appliance.router.haproxy_config import Paths, map_text, render
from appliance.router.plan import BoxView, RoutePlan, plan_routes

GB = 1 << 30


def _boxes(tls: bool = False) -> list[BoxView]:
    return [BoxView("a", "127.0.0.1", 9001, tls, "ready", {"llama": {"tier": "vram"}}, 5 * GB),
            BoxView("b", "127.0.0.1", 9002, False, "ready",
                    {"llama": {"tier": "vram"}, "sd": {"tier": "disk"}}, 9 * GB)]


def _check(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    for name in ("models.map", "resident.map"):
        (tmp_path / name).write_text("")
    return subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30,
                          env={"APPLIANCE_FLEET_TOKEN": "t0ken", "PATH": "/usr/sbin:/usr/bin"})


def test_the_rendered_config_is_valid_for_haproxy(tmp_path: Path) -> None:
    plan = plan_routes(_boxes(tls=True), RoutePlan())
    text = render(RouterConfig(port=18443, api_port=18090, bufsize=65536 * 2), Paths(tmp_path), plan)
    result = _check(text, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tune.bufsize 131072" in text
    assert "t0ken" not in text  # the token comes from HAProxy's environment
    assert "server b1 127.0.0.1:9001 ssl verify none check" in text
    assert "server b2 127.0.0.1:9002 track boxes/b2" in text and "retry-on 503 conn-failure" in text


def test_tls_termination_binds_with_the_pem_and_tells_the_boxes(tmp_path: Path) -> None:
    text = render(RouterConfig(tls_pem="/etc/appliance/router.pem"), Paths(tmp_path), RoutePlan())
    assert "bind 0.0.0.0:8443 ssl crt /etc/appliance/router.pem" in text
    assert "set-header X-Forwarded-Proto https if { ssl_fc }" in text  # image and job URLs keep https


def test_commands_follow_a_residency_change_without_touching_the_rest(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    before = plan_routes(_boxes(), RoutePlan())
    moved = [_boxes()[0], BoxView("b", "127.0.0.1", 9002, False, "ready",
                                  {"llama": {"tier": "disk"}, "sd": {"tier": "vram"}}, 9 * GB)]
    after = plan_routes(moved, before)
    cmds = transition(before, after, paths.models_map, paths.resident_map)
    llama = f"m{(after.backend_of('llama') or 0) + 1}"
    sd = f"m{(after.backend_of('sd') or 0) + 1}"
    assert cmds == [f"add map {paths.resident_map} sd 1", f"set server {llama}/b2 state maint"]
    assert sd != llama
    assert transition(after, after, paths.models_map, paths.resident_map) == []


def test_enabling_comes_before_the_map_and_disabling_after(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    before = plan_routes(_boxes()[:1], RoutePlan())
    after = plan_routes([BoxView("c", "127.0.0.2", 9003, False, "ready", {"new": {"tier": "vram"}}, GB)], before)
    cmds = transition(before, after, paths.models_map, paths.resident_map)
    first_map = next(i for i, c in enumerate(cmds) if " map " in c)
    assert cmds[0] == "set server boxes/b1 addr 127.0.0.2 port 9003"
    assert all("state ready" not in c for c in cmds[first_map:])
    assert all("state maint" not in c for c in cmds[:first_map])
    assert f"add map {paths.models_map} new m1" in cmds  # the freed backend is reused
    assert f"del map {paths.resident_map} llama" in cmds


def test_an_unknown_haproxy_state_gets_every_command(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    plan = plan_routes(_boxes(), RoutePlan())
    cmds = transition(None, plan, paths.models_map, paths.resident_map)
    assert f"clear map {paths.models_map}" in cmds
    assert sum(c.endswith("state maint") for c in cmds) > 0
    assert f"add map {paths.resident_map} llama 1" in cmds
    assert map_text(plan.map_entries()).splitlines()[0].startswith("llama m")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca_and_certs(where: Path) -> tuple[Path, Path, Path]:
    """A CA, a box certificate it signed (for 127.0.0.1) and a self-signed one: (ca.pem, signed.pem,
    selfsigned.pem), each certificate file holding its key too."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=fleet CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=where)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=box", "-keyout", "box.key", "-out", "box.csr",
             cwd=where)
    (where / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "box.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
             "-extfile", "san.ext", "-out", "box.crt", cwd=where)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=stranger",
             "-keyout", "self.key", "-out", "self.crt", cwd=where)
    signed, selfsigned = where / "signed.pem", where / "selfsigned.pem"
    signed.write_text((where / "box.crt").read_text() + (where / "box.key").read_text())
    selfsigned.write_text((where / "self.crt").read_text() + (where / "self.key").read_text())
    return where / "ca.pem", signed, selfsigned


def test_https_boxes_are_verified_against_the_configured_ca(tmp_path: Path) -> None:
    ca, _, _ = make_ca_and_certs(tmp_path)
    plan = plan_routes(_boxes(tls=True), RoutePlan())
    text = render(RouterConfig(box_ca_file=str(ca)), Paths(tmp_path), plan)
    assert f"server b1 127.0.0.1:9001 ssl verify required ca-file {ca} check" in text
    assert "verify none" not in text
    result = _check(text, tmp_path)  # HAProxy loads the CA file and accepts the lines
    assert result.returncode == 0, result.stdout + result.stderr
