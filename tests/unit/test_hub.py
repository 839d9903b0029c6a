"""A model outside the catalog: the hub (here a local HTTP stand-in of its file routes) is asked once, briefly,
and every failure is one line that says what to do."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gpuprov.errors import ModelUnavailable
from gpuprov.hub import resolve_model

CONFIG = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 4, "num_attention_heads": 8,
          "num_key_value_heads": 2, "head_dim": 64, "hidden_size": 512, "vocab_size": 32000,
          "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}


class HubStandIn(BaseHTTPRequestHandler):
    """STAND-IN for the hub's /{repo}/resolve/main/{file} route: org/open answers, org/gated wants a token."""
    hits: list[str] = []

    def log_message(self, *a):  # noqa: ANN002
        pass

    def do_GET(self):  # noqa: N802
        self.hits.append(self.path)
        if self.path.startswith("/org/gated/"):
            code, body = 401, b'{"error": "gated"}'
        elif self.path == "/org/open/resolve/main/config.json":
            code, body = 200, json.dumps(CONFIG).encode()
        elif self.path == "/org/open/resolve/main/model.safetensors.index.json":
            code, body = 200, json.dumps({"metadata": {"total_size": 4 << 30}, "weight_map": {}}).encode()
        else:
            code, body = 404, b'{"error": "not found"}'
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(autouse=True)
def online(monkeypatch):
    """These tests talk to local stand-ins only; the suite may run with HF_HUB_OFFLINE=1 (which gpuprov honours)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def hub():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), HubStandIn)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    HubStandIn.hits = []
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_model_on_the_hub_is_read_from_its_config(hub, monkeypatch):
    spec = resolve_model("org/open", endpoint=hub)
    assert spec.max_position_embeddings == 8192 and spec.num_attention_heads == 8
    assert abs(spec.weight_gib - 4.0) < 0.01


def test_gated_and_missing_models_are_one_line_each(hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(ModelUnavailable, match="org/gated is gated or private on the hub: set HF_TOKEN"):
        resolve_model("org/gated", endpoint=hub)
    with pytest.raises(ModelUnavailable, match="neither in gpuprov's catalog nor on the hub.*invoke models"):
        resolve_model("org/missing", endpoint=hub)
    assert HubStandIn.hits == ["/org/gated/resolve/main/config.json", "/org/missing/resolve/main/config.json"]


def test_a_hub_that_does_not_answer_is_asked_once(monkeypatch):
    """huggingface_hub's own download retries 5 times with back-off (24 s here); gpuprov asks once."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    lsn = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def drop():
        while True:
            try:
                conn, _ = lsn.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()  # the connection drops before any answer

    threading.Thread(target=drop, daemon=True).start()
    try:
        with pytest.raises(ModelUnavailable) as ei:
            resolve_model("org/anything", endpoint=f"http://127.0.0.1:{lsn.getsockname()[1]}")
    finally:
        lsn.close()
    assert accepted == [1]
    msg = str(ei.value)
    assert "\n" not in msg and "could not be reached" in msg and "a local folder holding its config.json" in msg
