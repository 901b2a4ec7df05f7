"""A real `vitsam serve` process on loopback with tiny models, for the API and page tests."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

TOKEN = "test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(models: dict, *extra: str):
    port = free_port()
    cmd = [sys.executable, "-m", "vitsam", "serve", "--port", str(port),
           "--detector", f"{models['grounding_dino']},{models['owlv2']}",
           "--segmenter", models["sam2"], "--device", "cpu", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            return json.loads(r.read())["status"] == "ok"

    try:
        wait_ready(proc, healthy, 120, "vitsam serve", proc.stdout.read)
        yield url
    finally:
        stop(proc, 10)


def wait_ready(proc, ready, seconds: float, what: str, output) -> None:
    """Poll `ready()` (an OSError counts as not yet) until it is true; RuntimeError when
    `proc` exits first (with `output()`, what it printed) or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {output()}")
        try:
            if ready():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become healthy in {seconds:g} s")
        time.sleep(0.5)


def stop(proc, seconds: float) -> None:
    """Terminate `proc`; kill it if it has not exited within `seconds`."""
    proc.terminate()
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
