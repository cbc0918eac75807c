"""The environment a local Ray's own processes start with, and what its workers get back."""

import os

from creformer.ray_utils import CLOSED_LOOPBACK_URL, _environ, offline_daemon_env, worker_proxy_env


def test_daemon_env_is_set_inside_and_restored_after(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")  # a user's own proxy
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("RAY_USAGE_STATS_REPORT_URL", raising=False)
    callers = worker_proxy_env()
    with _environ(offline_daemon_env()):
        assert os.environ["http_proxy"] == os.environ["HTTP_PROXY"] == CLOSED_LOOPBACK_URL
        assert os.environ["RAY_USAGE_STATS_REPORT_URL"].startswith("http://127.0.0.1:")
        assert "127.0.0.2" in os.environ["no_proxy"].split(",")  # the local node's own HTTP stays direct
    assert os.environ["HTTP_PROXY"] == "http://proxy.example:3128"
    assert "http_proxy" not in os.environ and "RAY_USAGE_STATS_REPORT_URL" not in os.environ
    # workers get the caller's settings, an unset one as empty (which proxy lookups treat as none)
    assert callers["HTTP_PROXY"] == "http://proxy.example:3128" and callers["http_proxy"] == ""
