"""Server speed: the JSON API (/api/v1/predict) beside the page's Gradio API (/predict).
Writes latency percentiles, requests/s, reviews/s and errors to bench/results/serve.json.

Phases, each on a fresh set of measurements (the server is started once):

- ``api_single``: one client sends one review at a time (sequential latency).
- ``api_batch64``: one client sends batches of 64 reviews (reviews/s).
- ``api_paced`` / ``gradio_paced``: 20 clients, each sending one review every 20/--rate
  seconds (40 requests/s in all by default, like 20 people using the page at once).
- ``api_saturated`` / ``gradio_saturated``: 20 clients, each sending its next request as
  soon as the last returns (the most the server can do; latency there is queueing).

Gradio's clients speak its HTTP API (POST /gradio_api/call/predict, then read the result
stream), through the server's queue like every caller; gradio_client itself adds about
55 ms of client-side work per call on this machine, which would measure the client.

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

        def gradio(client: httpx.Client, i: int) -> int:
            response = client.post("gradio_api/call/predict", json={"data": [texts[i % len(texts)]]})
            response.raise_for_status()
            event_id = response.json()["event_id"]
            with client.stream("GET", f"gradio_api/call/predict/{event_id}") as stream:
                body = "".join(stream.iter_text())
            if "event: complete" not in body:
                raise RuntimeError(body.strip()[-200:])
            label = json.loads(body.split("data:", 1)[1].strip().splitlines()[0])[0]["label"]
            if label not in ("positive", "negative"):
                raise RuntimeError(f"unexpected label {label!r}")
            return 1

        def api(client: httpx.Client, i: int, size: int = 1) -> int:
            batch = [texts[(i * size + j) % len(texts)] for j in range(size)]
            response = client.post("api/v1/predict", json={"texts": batch})
            response.raise_for_status()
            results = response.json()["results"]
            if len(results) != size or any(r["label"] not in ("positive", "negative") for r in results):
                raise RuntimeError(f"unexpected answer {results[:2]!r}")
            return size

        def phase(call, clients_used: int, seconds: float, interval: float | None) -> dict:
            latencies: list[float] = []
            reviews_done = [0]
            errors: list[str] = []
            lock = threading.Lock()
            started = time.time()
            stop_at = started + seconds

            def drive(i: int) -> None:
                n = i
                due = started + (interval or 0) * i / clients_used
                while time.time() < stop_at:
                    if interval:
                        time.sleep(max(0.0, due - time.time()))
                        due += interval
                    start = time.perf_counter()
                    try:
                        done = call(clients[i], n)
                        with lock:
                            latencies.append(time.perf_counter() - start)
                            reviews_done[0] += done
                    except Exception as exc:  # every failure is counted and reported
                        with lock:
                            errors.append(f"{type(exc).__name__}: {exc}")
                    n += clients_used

            threads = [threading.Thread(target=drive, args=(i,)) for i in range(clients_used)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.time() - started
            lat = np.array(latencies or [float("nan")]) * 1000
            return {"clients": clients_used, "seconds": round(elapsed, 1), "requests": len(latencies),
                    "errors": len(errors), "error_examples": errors[:5],
                    "requests_per_s": round(len(latencies) / elapsed, 1),
                    "reviews_per_s": round(reviews_done[0] / elapsed, 1),
                    "latency_ms": {q: round(float(np.percentile(lat, p)), 1)
                                   for q, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}}

        # Warm-up, not measured: each client opens its connection, and the server its
        # worker threads (without it the first second shows 350 ms latencies, all from set-up).
        for i, client in enumerate(clients):
            gradio(client, i)
            api(client, i)
        interval = args.clients / args.rate
        phases = {}
        phases["api_single"] = phase(api, 1, args.seconds / 2, None)
        phases["api_batch64"] = phase(lambda c, i: api(c, i, 64), 1, args.seconds / 2, None)
        for name, call in (("api", api), ("gradio", gradio)):
            # A further 3 s at the paced rate, not measured: the first second after a burst of
            # new clients shows 400 ms latencies while the server's worker threads ramp up.
            phase(call, args.clients, 3.0, interval)
            phases[f"{name}_paced"] = phase(call, args.clients, args.seconds, interval)
            phases[f"{name}_saturated"] = phase(call, args.clients, args.saturated_seconds, None)
    finally:
        server.terminate()
        server.wait(timeout=30)
    result = {
        "command": " ".join(["python", "bench/serve.py", *sys.argv[1:]]),
        "clients": args.clients, "cpus": os.cpu_count(), "paced_rate_requested": args.rate,
        "warm_up": "one request of each API per client, and 3 s at the paced rate before each paced phase, "
                   "not measured",
        **phases,
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
