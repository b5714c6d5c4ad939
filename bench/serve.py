"""Web page speed: 20 concurrent clients call /predict for 30 s.
Writes p50/p99 latency, requests/s and errors to bench/results/serve.json.

Two phases, both with 20 clients: "paced", where each client sends one request every
20/--rate seconds (40 requests/s in all by default, like 20 people using the page at
once), and "saturated", where each sends its next request as soon as the last returns,
which measures the most the server can do (there latency is queueing: 20 / throughput).

Clients speak Gradio's HTTP API (POST /gradio_api/call/predict, then read the result
stream), through the server's queue like every caller; gradio_client itself adds about
55 ms of client-side work per call on this machine, which would measure the client, not
the server.

    python bench/serve.py [--model DIR] [--clients 20] [--seconds 30]

The server is `python serve.py` on a free port of 127.0.0.1, started and stopped here;
every request is a different real-length review (IMDB test reviews when the archive is
beside the checkout, otherwise generated text).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reviews(n: int) -> list[str]:
    archive = ROOT.parent / "shared" / "imdb" / "aclImdb_v1.tar.gz"
    if archive.is_file():
        from sentiment.data import load_source

        return load_source(archive)["test"].shuffle(seed=0)["text"][:n]
    import random

    rng = random.Random(0)
    words = "the film was great awful plot acting story boring moving loved hated and a of".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(20, 400))) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests/s of all paced clients together")
    parser.add_argument("--saturated-seconds", type=float, default=15.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve.json"))
    args = parser.parse_args()

    import httpx
    import numpy as np

    port = free_port()
    command = [sys.executable, "serve.py", "--port", str(port), *sum((["--model", m] for m in args.model), [])]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            if server.poll() is not None:
                sys.exit(f"server exited: {server.stderr.read().strip()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    sys.exit("server did not start within 120 s")
                time.sleep(0.5)
        texts = reviews(2000)
        clients = [httpx.Client(base_url=url, timeout=60) for _ in range(args.clients)]

        def predict(client: httpx.Client, text: str) -> dict:
            response = client.post("gradio_api/call/predict", json={"data": [text]})
            response.raise_for_status()
            event_id = response.json()["event_id"]
            with client.stream("GET", f"gradio_api/call/predict/{event_id}") as stream:
                body = "".join(stream.iter_text())
            if "event: complete" not in body:
                raise RuntimeError(body.strip()[-200:])
            label = json.loads(body.split("data:", 1)[1].strip().splitlines()[0])[0]["label"]
            if label not in ("positive", "negative"):
                raise RuntimeError(f"unexpected label {label!r}")
            return label

        # Warm-up, not measured: each client opens its connection, and the server its
        # worker threads (without it the first second shows 350 ms latencies, all from set-up).
        for client in clients:
            predict(client, texts[0])
        def phase(seconds: float, interval: float | None) -> dict:
            latencies: list[float] = []
            errors: list[str] = []
            lock = threading.Lock()
            started = time.time()
            stop_at = started + seconds

            def drive(i: int) -> None:
                n = i
                due = started + (interval or 0) * i / args.clients
                while time.time() < stop_at:
                    if interval:
                        time.sleep(max(0.0, due - time.time()))
                        due += interval
                    text = texts[n % len(texts)]
                    n += args.clients
                    start = time.perf_counter()
                    try:
                        predict(clients[i], text)
                        with lock:
                            latencies.append(time.perf_counter() - start)
                    except Exception as exc:  # every failure is counted and reported
                        with lock:
                            errors.append(f"{type(exc).__name__}: {exc}")

            threads = [threading.Thread(target=drive, args=(i,)) for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.time() - started
            lat = np.array(latencies) * 1000
            return {"seconds": round(elapsed, 1), "requests": len(latencies), "errors": len(errors),
                    "error_examples": errors[:5], "requests_per_s": round(len(latencies) / elapsed, 1),
                    "latency_ms": {q: round(float(np.percentile(lat, p)), 1)
                                   for q, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}}

        # A further 3 s at the paced rate, not measured: the first second after a burst of
        # new clients shows 400 ms latencies while the server's worker threads ramp up.
        phase(3.0, args.clients / args.rate)
        paced = phase(args.seconds, args.clients / args.rate)
        saturated = phase(args.saturated_seconds, None)
    finally:
        server.terminate()
        server.wait(timeout=30)
    result = {
        "command": " ".join(["python", "bench/serve.py", *sys.argv[1:]]),
        "clients": args.clients, "cpus": os.cpu_count(), "paced_rate_requested": args.rate,
        "warm_up": "one request per client, then 3 s at the paced rate, not measured",
        "paced": paced, "saturated": saturated,
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
