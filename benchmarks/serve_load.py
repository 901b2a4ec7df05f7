"""Load on `vitsam serve`: requests/s, median and 99th-percentile latency, peak memory.

Starts a real server process on loopback with the default models at full size (random
weights from the default configs, which time the same as trained ones), then sends a
fixed number of POST /v1/segment requests from a fixed number of concurrent clients.

    python benchmarks/serve_load.py [--clients 4] [--requests 12] [--size 640x480]
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from segment_speed import build_models  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=12)
    p.add_argument("--size", default="640x480")
    p.add_argument("--port", type=int, default=7871)
    args = p.parse_args()
    w, h = map(int, args.size.split("x"))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
        buf, "JPEG"
    )
    body = buf.getvalue()
    url = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as tmp:
        det, seg = build_models(Path(tmp))
        queue = str(max(8, args.clients))
        proc = subprocess.Popen(
            [sys.executable, "-m", "vitsam", "serve", "--port", str(args.port), "--detector", str(det),
             "--segmenter", str(seg), "--device", "cpu", "--queue-size", queue],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"the server exited with status {proc.returncode}")
                try:
                    if httpx.get(url + "/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(1)

            def one(_):
                t0 = time.perf_counter()
                r = httpx.post(url + "/v1/segment", files={"image": ("x.jpg", body, "image/jpeg")},
                               data={"prompt": "cat. remote control", "max_detections": "5"},
                               timeout=600)  # fmt: skip
                return r.status_code, time.perf_counter() - t0

            one(0)  # warm-up
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - t0
            lat = sorted(t for _, t in results)
            codes = sorted({c for c, _ in results})
            p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
            print(
                f"{args.requests} requests from {args.clients} clients, image {w}x{h}, "
                "prompt 'cat. remote control', up to 5 detections"
            )
            print(
                f"status codes {codes}; {args.requests / wall:.3f} requests/s; "
                f"latency median {statistics.median(lat):.1f} s, p99 {p99:.1f} s; "
                f"server peak RSS {peak_rss_mb(proc.pid):.0f} MB"
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
