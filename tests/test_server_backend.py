"""The OpenAI-compatible server backend.

Fast tests run against a small fake server (stdlib http.server on 127.0.0.1) that records what it receives:
decoding rules in the payload, bounded concurrency, retries with backoff, a clear error when retries run out.
The end-to-end tests start llama-cpp-python's own server on 127.0.0.1 with the embedded GGUF: greedy
predictions identical to the in-process llama.cpp backend, and a server killed mid-run leaves finished entries
on disk so that a rerun completes with nothing lost.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tinyllm_utils.backends.base import END_OF_TURN
from tinyllm_utils.backends.factory import make_backend
from tinyllm_utils.backends.llama_cpp import LlamaCppBackend
from tinyllm_utils.backends.server import (
    LocalLlamaServer,
    OpenAICompatBackend,
    ServerRequestError,
    ServerSettings,
    ServerUnavailableError,
)
from tinyllm_utils.models.registry import resolve_model

SPEC = resolve_model("gemma-3-270m")


class FakeServer:
    """Answers /v1/completions with the prompt's tail; optional failures first, a delay, a fixed status."""

    def __init__(self, fail_first: int = 0, delay: float = 0.0, status: int = 200, body: str = ""):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.fail_first, self.delay, self.status, self.body = fail_first, delay, status, body
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append(payload)
                    fake.headers.append(dict(self.headers))
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    failing = len(fake.requests) <= fake.fail_first
                time.sleep(fake.delay)
                with fake.lock:
                    fake.in_flight -= 1
                if failing or fake.status != 200:
                    self._send(503 if failing else fake.status, fake.body or '{"error": "busy"}')
                    return
                text = "echo:" + payload["prompt"][-6:]
                self._send(200, json.dumps({"choices": [{"text": text, "index": 0, "finish_reason": "stop"}],
                                            "usage": {"prompt_tokens": len(payload["prompt"]),
                                                      "completion_tokens": 3}}))

            def do_GET(self):
                self._send(200, json.dumps({"data": [{"id": "fake-model"}]}))

            def _send(self, status: int, body: str):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    servers = []

    def start(**kwargs) -> FakeServer:
        servers.append(FakeServer(**kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _backend(url: str, **settings) -> OpenAICompatBackend:
    return OpenAICompatBackend(SPEC, max_new_tokens=17, seed=3, base_url=url, backoff_s=0.01, **settings)


def test_payload_follows_the_decoding_rules_and_order_is_kept(fake, monkeypatch):
    server = fake(delay=0.02)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prompts = [f"prompt number {i:02d}" for i in range(7)]
    generations = _backend(server.url, concurrency=3).generate(prompts)
    assert [g.text for g in generations] == ["echo:" + p[-6:] for p in prompts]
    assert [g.prompt_tokens for g in generations] == [len(p) for p in prompts]
    assert all(g.completion_tokens == 3 and g.seconds > 0 and not g.stopped_early for g in generations)
    payload = server.requests[0]
    assert payload["temperature"] == 0.0 and payload["max_tokens"] == 17 and payload["seed"] == 3
    assert payload["stop"] == [END_OF_TURN] and payload["stream"] is False
    assert payload["top_k"] == 1 and payload["repeat_penalty"] == 1.0  # greedy on llama.cpp's server too
    assert sorted(r["prompt"] for r in server.requests) == sorted(prompts)  # raw text, nothing added
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


def test_concurrency_is_bounded(fake):
    server = fake(delay=0.15)
    _backend(server.url, concurrency=2).generate([f"p{i}" for i in range(6)])
    assert server.max_in_flight == 2  # requests overlap, never more than the bound
    server_one = fake(delay=0.05)
    _backend(server_one.url, concurrency=1).generate([f"p{i}" for i in range(3)])
    assert server_one.max_in_flight == 1


def test_transient_errors_are_retried(fake):
    server = fake(fail_first=2)
    backend = _backend(server.url, concurrency=1, max_retries=3)
    assert backend.generate(["hello world"])[0].text == "echo:" + "hello world"[-6:]
    assert backend.retries_used == 2 and len(server.requests) == 3


def test_retries_run_out_with_a_clear_error(fake):
    server = fake(fail_first=100)
    with pytest.raises(ServerUnavailableError, match=r"127\.0\.0\.1.*after 2 retries.*HTTP 503.*resume"):
        _backend(server.url, max_retries=2).generate(["a", "b"])
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServerUnavailableError, match=rf"127\.0\.0\.1:{port}.*after 1 retries.*ConnectError"):
        _backend(f"http://127.0.0.1:{port}/v1", max_retries=1).generate(["a"])


def test_refusals_are_not_retried(fake):
    too_long = fake(status=400, body='{"error": "Requested tokens (9000) exceed context window of 4096"}')
    generation = _backend(too_long.url).generate(["x"])[0]
    assert generation.error == "inference:prompt_too_long" and generation.text == ""
    assert len(too_long.requests) == 1
    unauthorized = fake(status=401, body='{"error": "bad key"}')
    with pytest.raises(ServerRequestError, match="HTTP 401"):
        _backend(unauthorized.url, max_retries=5).generate(["x"])
    assert len(unauthorized.requests) == 1


def test_settings_come_from_the_environment(monkeypatch, fake):
    server = fake()
    monkeypatch.delenv("TINYLLM_OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="TINYLLM_OPENAI_BASE_URL"):
        ServerSettings.from_env("m")
    monkeypatch.setenv("TINYLLM_OPENAI_BASE_URL", server.url + "/")
    monkeypatch.setenv("TINYLLM_OPENAI_MODEL", "served-name")
    monkeypatch.setenv("TINYLLM_OPENAI_CONCURRENCY", "3")
    backend = make_backend(SPEC, "openai", max_new_tokens=5)
    assert isinstance(backend, OpenAICompatBackend) and backend.tokenizer is None
    assert backend.settings.base_url == server.url and backend.settings.concurrency == 3
    backend.generate(["hi"])
    assert server.requests[0]["model"] == "served-name"
    described = backend.describe()
    assert described["backend"] == "openai" and described["server_models"] == ["fake-model"]


# ------------------------------------------------------------------ against llama-cpp-python's own server

@pytest.fixture
def llama_server(tmp_path):
    """Starts llama-cpp-python's server on 127.0.0.1 (bounded start); every one started is killed at teardown."""
    servers = []

    def start() -> LocalLlamaServer:
        servers.append(LocalLlamaServer(SPEC.gguf_path(), tmp_path / f"server{len(servers)}.log"))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _sample_prompts() -> list[str]:
    from tinyllm_utils.bfcl.data import load_category
    from tinyllm_utils.models.families import entry_prompt

    examples = load_category("simple_python", 2, 0) + load_category("irrelevance", 1, 0)
    return [entry_prompt(e.entry, SPEC) for e in examples]


@pytest.mark.slow
def test_server_predictions_match_the_in_process_backend(llama_server):
    server = llama_server()
    prompts = _sample_prompts()
    local = LlamaCppBackend(SPEC, max_new_tokens=24, n_ctx=4096).generate(prompts)
    remote = OpenAICompatBackend(SPEC, max_new_tokens=24, base_url=server.url, concurrency=2).generate(prompts)
    # Same text and token counts: the server tokenizes the raw prompt as in-process does (one BOS, special
    # tokens parsed) and decodes greedily with the same stop.
    assert [g.text for g in remote] == [g.text for g in local]
    assert [g.prompt_tokens for g in remote] == [g.prompt_tokens for g in local]
    assert [g.completion_tokens for g in remote] == [g.completion_tokens for g in local]
    assert any(g.text for g in local)


@pytest.mark.slow
def test_killed_server_stops_the_run_clearly_and_a_rerun_completes(llama_server, tmp_path, monkeypatch):
    from tinyllm_utils.core.results import read_jsonl
    from tinyllm_utils.evaluation.evaluate import EvalConfig, evaluate

    config = EvalConfig(categories=["simple_python"], limit=3, backend="openai", max_new_tokens=12, batch_size=1,
                        stop_when_hopeless=False)
    out = tmp_path / "run"
    predictions = out / "predictions" / "simple_python.jsonl"
    server = llama_server()
    monkeypatch.setenv("TINYLLM_OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("TINYLLM_OPENAI_MAX_RETRIES", "2")
    monkeypatch.setenv("TINYLLM_OPENAI_BACKOFF_S", "0.2")
    monkeypatch.setenv("TINYLLM_OPENAI_CONCURRENCY", "1")

    def kill_after_one_entry():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(read_jsonl(predictions)) < 1:
            time.sleep(0.05)
        server.kill()

    killer = threading.Thread(target=kill_after_one_entry, daemon=True)
    killer.start()
    with pytest.raises(ServerUnavailableError, match=rf"127\.0\.0\.1:{server.port}.*after 2 retries"):
        evaluate(config, out, progress=False)
    killer.join(timeout=30)
    done = read_jsonl(predictions)
    assert 1 <= len(done) < 3  # finished entries are on disk, the rest is not

    monkeypatch.setenv("TINYLLM_OPENAI_BASE_URL", llama_server().url)  # the server is back (another port)
    metrics = evaluate(config, out, progress=False)
    rows = read_jsonl(predictions)
    assert len(rows) == 3 and len({r["id"] for r in rows}) == 3 and rows[:len(done)] == done
    assert metrics["categories"]["simple_python"]["n"] == 3

    # Nothing lost or changed: the same raw answers as an uninterrupted in-process run.
    reference = tmp_path / "in_process"
    evaluate(EvalConfig(categories=["simple_python"], limit=3, backend="llama_cpp", max_new_tokens=12,
                        batch_size=1, stop_when_hopeless=False), reference, progress=False)
    expected = {r["id"]: r["raw"] for r in read_jsonl(reference / "predictions" / "simple_python.jsonl")}
    assert {r["id"]: r["raw"] for r in rows} == expected
