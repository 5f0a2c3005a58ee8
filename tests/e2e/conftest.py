"""Starts a real `qembed serve` on a loopback port for the client tests."""

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


def _binary() -> str:
    path = os.environ.get("QEMBED_BIN", str(ROOT / "target" / "debug" / "qembed"))
    if not os.path.exists(path):
        pytest.fail(f"{path} not found: run `cargo build -p qembed-server` first or set QEMBED_BIN")
    return path


@pytest.fixture(scope="session")
def server():
    proc = subprocess.Popen(
        [_binary(), "serve", "--host", "127.0.0.1", "--port", "0",
         "--model-path", str(ROOT / "models" / MODEL),
         "--served-model-name", MODEL, "--served-model-name", ALIAS,
         "--api-key", "test-key"],
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
        pytest.fail("qembed did not start")
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
            pytest.fail("qembed never became ready")
        time.sleep(0.05)
    yield {"base_url": base + "/v1", "api_key": "test-key", "model": MODEL, "alias": ALIAS}
    proc.terminate()
    assert proc.wait(30) == 0


@pytest.fixture(scope="session")
def reference():
    with open(ROOT / "models" / MODEL / "reference.json") as f:
        return json.load(f)
