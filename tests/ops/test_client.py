"""Which token goes to which cluster: asked of the cluster (`/api/authentication_mode`, here
served by a static HTTP server on loopback), taken from where Ray looks for it."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import UsageError
from pipeline.ops import client


@pytest.fixture
def no_token_env(monkeypatch, tmp_path):
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.ray/auth_token
    return tmp_path


def serve_mode(http_server, mode: str) -> str:
    (http_server.root / "api").mkdir(exist_ok=True)
    (http_server.root / "api" / "authentication_mode").write_text(json.dumps({"authentication_mode": mode}))
    return http_server.url.rstrip("/")


def test_token_sources_in_rays_order(no_token_env, monkeypatch):
    assert client.find_token() is None
    home_token = no_token_env / "home" / ".ray" / "auth_token"
    home_token.parent.mkdir(parents=True)
    home_token.write_text("from-home\n")
    assert client.find_token() == "from-home"
    path_token = no_token_env / "tok"
    path_token.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path_token))
    assert client.find_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert client.find_token() == "from-env"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(no_token_env / "missing"))
    with pytest.raises(UsageError, match="cannot read the token"):
        client.find_token()


def test_a_token_only_goes_to_a_cluster_that_asks_for_one(http_server, no_token_env, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    url = serve_mode(http_server, "disabled")
    assert client._auth_headers(url) == {}
    url = serve_mode(http_server, "token")
    assert client._auth_headers(url) == {"Authorization": "Bearer secret"}
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    with pytest.raises(UsageError, match="requires a token: set RAY_AUTH_TOKEN"):
        client._auth_headers(url)


def test_address_defaults_and_unreachable_cluster(no_token_env, monkeypatch):
    with pytest.raises(UsageError, match="no cluster address"):
        client.connect(None)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:9")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8")
    assert client.default_address() == "http://127.0.0.1:8"  # as Ray's CLI: the API server address first
    with pytest.raises(client.ClusterError, match="cannot reach the Ray dashboard at http://127.0.0.1:8"):
        client.connect(None)
