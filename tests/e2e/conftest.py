"""Starts real `qembed serve` processes on loopback ports for the client tests: the
embedding fixture, and the reranker fixture (once as shipped, once with a 128-token
pair limit for the reference's truncated group)."""

import contextlib
import json
import os
import pathlib
import subprocess
import threading
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = "qwen3-tiny-gqa"
# LlamaIndex only accepts OpenAI model names, so the server also answers to one: the
# alias is how a team points an existing LlamaIndex app at qembed.
ALIAS = "text-embedding-3-small"
RERANK_MODEL = "qwen3-rerank-tied"
# The name a Cohere app already sends; serving it is how such an app is pointed here.
RERANK_ALIAS = "rerank-v3.5"
API_KEY = "test-key"


def _binary() -> str:
    path = os.environ.get("QEMBED_BIN", str(ROOT / "target" / "debug" / "qembed"))
    if not os.path.exists(path):
        pytest.fail(f"{path} not found: run `cargo build -p qembed-server` first or set QEMBED_BIN")
    return path


@contextlib.contextmanager
def _spawn(model: str, *args: str):
    """Starts `qembed serve` on a free port; gives its base URL (no path), then stops it
    and requires a clean exit."""
    proc = subprocess.Popen(
        [_binary(), "serve", "--host", "127.0.0.1", "--port", "0",
         "--model-path", str(ROOT / "models" / model), "--api-key", API_KEY, *args],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    found = {}
    ready = threading.Event()

    def read():
        for line in proc.stderr:
            if line.startswith("qembed listening on "):
                found["addr"] = line.split()[-1]
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(60):
        proc.kill()
        pytest.fail(f"qembed ({model}) did not start")
    base = f"http://{found['addr']}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(base + "/ready") as r:
                if r.status == 200:
                    break
        except Exception:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"qembed ({model}) never became ready")
        time.sleep(0.05)
    try:
        yield base
    finally:
        proc.terminate()
        code = proc.wait(30)
    assert code == 0, f"qembed ({model}) exited with {code}"


@pytest.fixture(scope="session")
def server():
    with _spawn(MODEL, "--served-model-name", MODEL, "--served-model-name", ALIAS) as base:
        yield {"base_url": base + "/v1", "url": base, "api_key": API_KEY, "model": MODEL,
               "alias": ALIAS}


@pytest.fixture(scope="session")
def reranker():
    """The reranker as shipped: f32, the card's 8192-token pair limit."""
    names = ["--served-model-name", RERANK_MODEL, "--served-model-name", RERANK_ALIAS]
    with _spawn(RERANK_MODEL, "--task", "rerank", *names) as base:
        yield {"url": base, "api_key": API_KEY, "model": RERANK_MODEL, "alias": RERANK_ALIAS}


@pytest.fixture(scope="session")
def reranker_128():
    """The reranker with the pair limit of the reference's `truncated` group."""
    with _spawn(RERANK_MODEL, "--task", "rerank", "--max-input-tokens", "128") as base:
        yield {"url": base, "api_key": API_KEY, "model": RERANK_MODEL}


def _load(*parts):
    with open(ROOT.joinpath("models", *parts)) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def reference():
    return _load(MODEL, "reference.json")


@pytest.fixture(scope="session")
def rerank_reference():
    return _load(RERANK_MODEL, "reference.json")


@pytest.fixture(scope="session")
def pipeline():
    return _load("pipeline.json")
