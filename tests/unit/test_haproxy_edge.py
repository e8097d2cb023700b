"""The edge settings applied to the HAProxy config that Ray 2.60's own code renders.

The config comes from Ray's HAProxyApi (ray/serve/_private/haproxy.py), so a Ray upgrade that
changes its template fails here first; HAProxy's own ``-c`` checks the edited file.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from marcelle_torch.serving import haproxy_edge


def ray_config(tmp_path, host: str) -> str:
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions

    cfg = HAProxyConfig(
        http_options=HTTPOptions(host=host, port=18123),
        socket_path=str(tmp_path / "admin.sock"),
        server_state_base=str(tmp_path),
        server_state_file=str(tmp_path / "state"),
        metrics_socket_path=str(tmp_path / "metrics.sock"),
        log_target="stdout",
        metrics_port=18124,
        stats_port=18125,
    )
    api = HAProxyApi(cfg=cfg, config_file_path=str(tmp_path / "haproxy.cfg"))
    api._generate_config_file_internal()
    return str(tmp_path / "haproxy.cfg")


def lines_with(text: str, start: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith(start)]


def test_ray_config_as_rendered_binds_everywhere(tmp_path):
    """What the edits are for (if Ray fixes this upstream, the launcher can go)."""
    text = open(ray_config(tmp_path, "127.0.0.1")).read()
    assert "bind :18124" in text and "bind *:18125" in text
    assert "mode 666 level admin" in text
    assert not lines_with(text, "timeout http-request")


@pytest.mark.parametrize("host, bound", [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "*")])
def test_edited_config_binds_the_frontend_host_and_is_valid(tmp_path, monkeypatch, host, bound):
    path = ray_config(tmp_path, host)
    monkeypatch.delenv(haproxy_edge.STATS_HOST_ENV, raising=False)
    monkeypatch.delenv(haproxy_edge.METRICS_HOST_ENV, raising=False)
    monkeypatch.setenv(haproxy_edge.REQUEST_TIMEOUT_ENV, "7")
    haproxy_edge.prepare(["-db", "-f", path])
    text = open(path).read()
    assert sorted(lines_with(text, "bind ")) == sorted(
        [f"bind {bound}:18123", f"bind {bound}:18124", f"bind {bound}:18125"]
    )
    assert lines_with(text, "stats socket")[0].split()[3:6] == ["mode", "600", "level"]
    assert lines_with(text, "timeout http-request") == ["timeout http-request 7s"]
    assert lines_with(text, "option http-buffer-request")
    page = open(next(line.split()[2] for line in lines_with(text, "errorfile 408")), newline="").read()
    assert page.startswith("HTTP/1.1 408 ")
    assert json.loads(page.split("\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    haproxy_edge.prepare(["-db", "-f", path])  # a second pass changes nothing
    assert open(path).read() == text
    check = subprocess.run([haproxy_edge.real_binary(), "-c", "-f", path], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_stats_and_metrics_hosts_can_differ(tmp_path, monkeypatch):
    path = ray_config(tmp_path, "0.0.0.0")
    monkeypatch.setenv(haproxy_edge.STATS_HOST_ENV, "127.0.0.1")
    monkeypatch.setenv(haproxy_edge.METRICS_HOST_ENV, "0.0.0.0")
    haproxy_edge.prepare(["-db", "-f", path])
    text = open(path).read()
    assert "bind 127.0.0.1:18125" in text and "bind *:18124" in text and "bind *:18123" in text


def test_an_unexpected_config_stops_the_start(tmp_path, capsys):
    path = tmp_path / "haproxy.cfg"
    path.write_text(
        "global\n    stats socket /x mode 660 level admin\ndefaults\n    mode http\n"
        "frontend http_frontend\n    bind 127.0.0.1:1\n"
    )
    assert haproxy_edge.main(["-db", "-f", str(path)]) == 1
    assert "expected one line matching" in capsys.readouterr().err
