"""Server speed: the JSON API (/api/v1/predict) and the page's Gradio API (/predict), on each
engine. Writes latency percentiles, requests/s, reviews/s, errors and the server's memory
to bench/results/serve.json.

Engines (``--engines``, each a server started and stopped here):

- ``batched``: ``python serve.py``, the single process with its shared batcher
  (``--batch-wait-ms``, ``--max-batch-size`` as given here);
- ``unbatched``: the same with ``--max-batch-size 1``: one review per forward pass;
- ``ray1`` / ``ray2``: ``python serve.py --engine ray --replicas 1`` / ``2`` (a local Ray
  cluster; the JSON API only).

Phases, each on a fresh set of measurements:

- ``api_single``: one client sends one review at a time (sequential latency).
- ``api_batch64``: one client sends batches of 64 reviews (reviews/s).
- ``api_paced`` / ``gradio_paced``: 20 clients, each sending one review every 20/--rate
  seconds (40 requests/s in all by default, like 20 people using the page at once).
- ``api_saturated`` / ``gradio_saturated``: 20 clients, each sending its next request as
  soon as the last returns (the most the server can do; latency there is queueing).

Gradio's clients speak its HTTP API (POST /gradio_api/call/predict, then read the result
stream), through the server's queue like every caller; gradio_client itself adds about
55 ms of client-side work per call on this machine, which would measure the client.

    python bench/serve.py [--engines batched,unbatched,ray1,ray2] [--seconds 30]
                          [--batch-wait-ms MS] [--max-batch-size N] [--concurrency N]
                          [--model DIR] [--clients 20]

Every request is a different real-length review (IMDB test reviews when the archive is
beside the checkout, otherwise generated text). ``rss_mb`` is the server process's
resident memory once it answers, after warm-up, and at the end (for Ray, the sum over
the server and every process below it).
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
ENGINES = {"batched": [], "unbatched": ["--max-batch-size", "1"], "ray1": ["--engine", "ray", "--replicas", "1"],
           "ray2": ["--engine", "ray", "--replicas", "2"]}


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


def rss_mb(pid: int, tree: bool) -> float:
    """Resident memory of ``pid`` (and, with ``tree``, of every process below it), in MB."""
    parents, sizes = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            status = (entry / "status").read_text()
            sizes[int(entry.name)] = int(status.split("VmRSS:", 1)[1].split()[0]) if "VmRSS:" in status else 0
        except (OSError, ValueError, IndexError):
            pass
    pids, frontier = {pid}, [pid]
    while tree and frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in pids:
                pids.add(child)
                frontier.append(child)
    return round(sum(sizes.get(p, 0) for p in pids) / 1024, 1)


def start(args, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "serve.py", "--port", str(port), *sum((["--model", m] for m in args.model), []),
               "--batch-wait-ms", str(args.batch_wait_ms), *extra]
    if "--max-batch-size" not in extra:
        command += ["--max-batch-size", str(args.max_batch_size)]
    if args.concurrency:
        command += ["--concurrency", str(args.concurrency)]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}/"
    import httpx

    deadline = time.time() + 300
    while True:
        if server.poll() is not None:
            sys.exit(f"server exited: {server.stderr.read().strip()}")
        try:
            if httpx.get(url + "healthz", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            server.kill()
            sys.exit("server did not start within 300 s")
        time.sleep(0.5)


def phase(call, clients, clients_used: int, seconds: float, interval: float | None) -> dict:
    import numpy as np

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
            begin = time.perf_counter()
            try:
                done = call(clients[i], n)
                with lock:
                    latencies.append(time.perf_counter() - begin)
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


def measure(args, texts: list[str], extra: list[str], page: bool) -> dict:
    import httpx

    server, url = start(args, extra)
    try:
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

        tree = "ray" in extra
        started = rss_mb(server.pid, tree)
        # Warm-up, not measured: each client opens its connection, and the server its
        # worker threads (without it the first second shows 350 ms latencies, all from set-up);
        # one request of 64 reviews sets up the largest batch the server computes.
        for i, client in enumerate(clients):
            if page:
                gradio(client, i)
            api(client, i)
        api(clients[0], 0, 64)
        result = {"server_args": extra, "rss_mb": {"started": started, "after_warm_up": rss_mb(server.pid, tree)}}
        interval = args.clients / args.rate
        result["api_single"] = phase(api, clients, 1, args.seconds / 2, None)
        result["api_batch64"] = phase(lambda c, i: api(c, i, 64), clients, 1, args.seconds / 2, None)
        result["rss_mb"]["after_single_and_batch64"] = rss_mb(server.pid, tree)
        for name, call in (("api", api), ("gradio", gradio)) if page else (("api", api),):
            # A further 3 s at the paced rate, not measured: the first second after a burst of
            # new clients shows 400 ms latencies while the server's worker threads ramp up.
            phase(call, clients, args.clients, min(3.0, args.seconds), interval)
            result[f"{name}_paced"] = phase(call, clients, args.clients, args.seconds, interval)
            result[f"{name}_saturated"] = phase(call, clients, args.clients, args.saturated_seconds, None)
            result["rss_mb"][f"after_{name}"] = rss_mb(server.pid, tree)
        result["rss_mb"]["end"] = rss_mb(server.pid, tree)
        return result
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--engines", default="batched,unbatched,ray1,ray2",
                        help=f"comma-separated, of {', '.join(ENGINES)}")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests/s of all paced clients together")
    parser.add_argument("--saturated-seconds", type=float, default=15.0)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=None, help="the server's --concurrency (default: its own)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve.json"))
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        parser.error(f"--engines: unknown {', '.join(unknown)} (known: {', '.join(ENGINES)})")

    texts = reviews(2000)
    result = {
        "command": " ".join(["python", "bench/serve.py", *sys.argv[1:]]),
        "clients": args.clients, "cpus": os.cpu_count(), "paced_rate_requested": args.rate,
        "batch_wait_ms": args.batch_wait_ms, "max_batch_size": args.max_batch_size,
        "concurrency": args.concurrency or "the server's default",
        "warm_up": "one request of each API per client, one request of 64 reviews, and 3 s at the paced rate "
                   "before each paced phase, not measured",
    }
    for engine in engines:
        result[engine] = measure(args, texts, ENGINES[engine], page="ray" not in engine)
        print(json.dumps({engine: result[engine]}, indent=2), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
