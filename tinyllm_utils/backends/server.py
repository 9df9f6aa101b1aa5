"""Evaluate through any OpenAI-compatible completions server (vLLM, SGLang, TGI, llama.cpp's server, ...).

    export TINYLLM_OPENAI_BASE_URL=http://127.0.0.1:8000/v1   # the server's /v1 root
    export TINYLLM_OPENAI_MODEL=google/gemma-3-270m            # the name the server serves (default: registry name)
    export OPENAI_API_KEY=...                                  # only if the server wants one
    export TINYLLM_OPENAI_CONCURRENCY=4                        # requests in flight at once (default 4)
    python -m tinyllm_utils.evaluation.evaluate --backend openai ...      # (or EvalConfig(backend="openai"))

`OpenAICompatBackend` has the interface of `backends.LlamaCppBackend` (`generate`, `tokenizer`, `describe`).
It sends the exact prompt text that the in-process backends tokenize (`prompts.format_prompt`, no BOS: the
server adds it) to `POST {base_url}/completions` with the same decoding rules: greedy (temperature 0, plus
top_k=1 and no repetition penalty for servers whose defaults differ), `max_tokens` = the token cap, stop at
`<end_of_turn>`, the run's seed.

What differs, by necessity:
* Early stop (`stop_when_hopeless`) is not done: a server cannot run our stopping rule, so the whole answer is
  generated. The score is the same (a prefix that can never decode as calls stays so), the saved raw text is
  longer and `stopped_early` is always false.
* A prompt longer than the server's context is `inference:prompt_too_long` when the server refuses it (HTTP
  400 naming the context); a server that instead shortens `max_tokens` to fit (llama-cpp-python does) produces
  an answer where the in-process backend refuses. Only prompts within `max_new_tokens` of the window differ.

Transient failures (connection refused or reset, timeouts, HTTP 408/429/5xx) are retried with exponential
backoff; when the retries run out, `ServerUnavailableError` names the URL and the retry count. Evaluation
appends each finished entry to disk before the next batch, so a rerun of the same command resumes.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tinyllm_utils.backends.base import END_OF_TURN, Generation, prompt_tokenizer
from tinyllm_utils.models.registry import ModelSpec

TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
# Greedy on servers whose sampling defaults are not (llama-cpp-python: repeat_penalty 1.1, top_k 40).
# Unknown fields are ignored by vLLM, SGLang and llama-cpp-python; set TINYLLM_OPENAI_EXTRA_BODY='{}' if a
# strict server refuses them.
GREEDY_EXTRAS = {"top_k": 1, "min_p": 0.0, "repeat_penalty": 1.0, "repetition_penalty": 1.0}


class ServerUnavailableError(RuntimeError):
    """The server kept failing after every retry; entries already finished are on disk."""


class ServerRequestError(RuntimeError):
    """The server refused a request for a reason that retrying cannot fix (bad model name, bad key, ...)."""


@dataclass
class ServerSettings:
    base_url: str
    model: str
    api_key: str | None = None
    concurrency: int = 4
    max_retries: int = 5
    backoff_s: float = 1.0  # first wait; doubles each retry, capped at 30 s
    timeout_s: float = 600.0  # per request: a long answer on a slow server can take minutes
    extra_body: dict = field(default_factory=lambda: dict(GREEDY_EXTRAS))

    @classmethod
    def from_env(cls, default_model: str, **overrides) -> "ServerSettings":
        """Settings from TINYLLM_OPENAI_* / OPENAI_API_KEY; keyword overrides (not None) win."""
        env = os.environ
        values = {
            "base_url": env.get("TINYLLM_OPENAI_BASE_URL"),
            "model": env.get("TINYLLM_OPENAI_MODEL") or default_model,
            "api_key": env.get("OPENAI_API_KEY") or None,
            "concurrency": int(env.get("TINYLLM_OPENAI_CONCURRENCY", 4)),
            "max_retries": int(env.get("TINYLLM_OPENAI_MAX_RETRIES", 5)),
            "backoff_s": float(env.get("TINYLLM_OPENAI_BACKOFF_S", 1.0)),
            "timeout_s": float(env.get("TINYLLM_OPENAI_TIMEOUT_S", 600)),
        }
        if "TINYLLM_OPENAI_EXTRA_BODY" in env:
            values["extra_body"] = json.loads(env["TINYLLM_OPENAI_EXTRA_BODY"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not values["base_url"]:
            raise ValueError("backend 'openai' needs the server's URL: set TINYLLM_OPENAI_BASE_URL "
                             "(e.g. http://127.0.0.1:8000/v1) or pass base_url=")
        if values["concurrency"] < 1:
            raise ValueError(f"concurrency must be >= 1, got {values['concurrency']}")
        values["base_url"] = values["base_url"].rstrip("/")
        return cls(**values)


class OpenAICompatBackend:
    name = "openai"

    def __init__(self, spec: ModelSpec, max_new_tokens: int = 256, seed: int = 0, **settings):
        import httpx

        self.spec, self.max_new_tokens, self.seed = spec, max_new_tokens, seed
        self.settings = ServerSettings.from_env(spec.hf_id or spec.name, **settings)
        self.tokenizer = prompt_tokenizer(spec)  # chat_template models are formatted here, sent as text
        headers = {"Authorization": f"Bearer {self.settings.api_key}"} if self.settings.api_key else {}
        self.client = httpx.Client(
            headers=headers, timeout=self.settings.timeout_s,
            limits=httpx.Limits(max_connections=self.settings.concurrency,
                                max_keepalive_connections=self.settings.concurrency))
        self._lock = threading.Lock()
        self.retries_used = 0  # over the backend's life: a sign of an overloaded or flaky server

    @property
    def url(self) -> str:
        return f"{self.settings.base_url}/completions"

    def generate(self, prompts: list[str], stop_when_hopeless: bool = False,
                 grammars: list[str | None] | None = None) -> list[Generation]:
        """One request per prompt, at most `concurrency` in flight; results in prompt order.

        `stop_when_hopeless` is accepted for interface parity and ignored (see the module docstring);
        grammars are refused (servers take them in their own ways)."""
        from tinyllm_utils.backends.base import refuse_grammars

        refuse_grammars(self.name, grammars)
        if len(prompts) <= 1 or self.settings.concurrency == 1:
            return [self._generate_one(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(prompts))) as pool:
            futures = [pool.submit(self._generate_one, p) for p in prompts]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:  # do not start requests after a fatal error
                    f.cancel()
                raise

    def _payload(self, prompt: str) -> dict:
        return {**self.settings.extra_body, "model": self.settings.model, "prompt": prompt,
                "max_tokens": self.max_new_tokens, "temperature": 0.0, "top_p": 1.0, "stop": [END_OF_TURN],
                "seed": self.seed, "stream": False, "n": 1}

    def _generate_one(self, prompt: str) -> Generation:
        start = time.perf_counter()
        response = self._post(self._payload(prompt))
        seconds = time.perf_counter() - start
        if response is None:  # refused as too long for the server's context
            return Generation("", 0, 0, seconds, error="inference:prompt_too_long")
        choice = response["choices"][0]
        usage = response.get("usage") or {}
        return Generation(choice.get("text") or "", usage.get("prompt_tokens", 0),
                          usage.get("completion_tokens", 0), seconds)

    def _post(self, payload: dict) -> dict | None:
        import httpx

        last = None
        for attempt in range(self.settings.max_retries + 1):
            if attempt:
                with self._lock:
                    self.retries_used += 1
                time.sleep(self._wait(attempt, last))
            try:
                response = self.client.post(self.url, json=payload)
            except httpx.TransportError as exc:  # refused, reset, timed out: the server may come back
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in TRANSIENT_STATUS:
                last = response
                continue
            if response.status_code == 400 and "context" in response.text.lower():
                return None
            if response.status_code >= 400:
                raise ServerRequestError(f"{self.url} refused the request: HTTP {response.status_code} "
                                         f"{response.text[:500]}")
            return response.json()
        detail = f"HTTP {last.status_code} {last.text[:200]}" if isinstance(last, httpx.Response) else last
        raise ServerUnavailableError(
            f"OpenAI-compatible server {self.url} failed after {self.settings.max_retries} retries "
            f"(last: {detail}). Entries finished so far are saved; rerun the same command to resume.")

    def _wait(self, attempt: int, last) -> float:
        retry_after = getattr(last, "headers", {}).get("retry-after") if last is not None else None
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            return min(float(retry_after), 60.0)
        return min(self.settings.backoff_s * 2 ** (attempt - 1), 30.0)

    def describe(self) -> dict:
        import httpx

        return {"backend": self.name, "base_url": self.settings.base_url, "model": self.settings.model,
                "concurrency": self.settings.concurrency, "max_retries": self.settings.max_retries,
                "extra_body": self.settings.extra_body, "max_new_tokens": self.max_new_tokens,
                "early_stop": "not available through a server", "httpx": httpx.__version__,
                "server_models": self._server_models()}

    def _server_models(self) -> list[str] | None:
        """What the server says it serves (GET /models), recorded in run.json; None if it does not say."""
        try:
            response = self.client.get(f"{self.settings.base_url}/models", timeout=10)
            return [m.get("id") for m in response.json().get("data", [])]
        except Exception:  # informational only: an old or minimal server may lack /models
            return None

    def close(self) -> None:
        self.client.close()


class LocalLlamaServer:
    """llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`) on 127.0.0.1 with a GGUF:
    for tests and benchmarks. Loopback only; the start is bounded in time; `close()` (or leaving the `with`
    block) kills it.

        with LocalLlamaServer(spec.gguf_path(), log_path="server.log") as server:
            os.environ["TINYLLM_OPENAI_BASE_URL"] = server.url
    """

    def __init__(self, gguf, log_path, n_ctx: int = 4096, threads: int | None = None, start_timeout: float = 120):
        import socket
        import subprocess
        import sys

        import httpx

        with socket.socket() as probe:  # a free port on loopback
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threads = threads or os.cpu_count() or 1
        self.log = open(log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
             "--port", str(self.port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
             "--n_threads_batch", str(threads)],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.close()
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}; see {log_path}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.close()
        raise RuntimeError(f"llama_cpp.server did not answer within {start_timeout} s; see {log_path}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def close(self) -> None:
        self.kill()
        self.proc.wait(timeout=30)
        if not self.log.closed:
            self.log.close()

    def __enter__(self) -> "LocalLlamaServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
