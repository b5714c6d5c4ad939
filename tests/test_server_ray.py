"""``sentiment serve --engine ray``: the JSON API on Ray Serve (a one-node cluster started by the
server itself), against the single-process server, over real HTTP."""
import os
import random
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import Server, make_reviews
from test_server import BAD_BODIES
from test_server_batching import _metric


def serve_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.serve") is not None \
        and importlib.util.find_spec("grpc") is not None


pytestmark = [pytest.mark.slow, pytest.mark.ray,
              pytest.mark.skipif(not serve_available(), reason='Ray Serve is not installed: pip install -e ".[ray]"')]

REVIEWS = [text for text, _ in make_reviews(40, seed=11)] + ["", "zzzq qqqx", "loved it"]


@pytest.fixture(scope="module")
def ray_server(server, tmp_path_factory):
    """The same models and limits as the session's single-process ``server``, on Ray Serve, 2 replicas."""
    args = list(map(str, server.proc.args))
    tiny, again = [args[i + 1] for i, a in enumerate(args) if a == "--model"]
    running = Server("--engine", "ray", "--replicas", "2", "--model", tiny, "--model", again, "--precision", "float32",
                     "--max-chars", "5000", "--max-batch", "8", "--max-upload-mb", "1", "--max-rows", "50",
                     log=tmp_path_factory.mktemp("ray-serve") / "serve.log")
    try:
        yield running.wait_ready(timeout=240)
    finally:
        running.stop()


def _post(url, body, **kw):
    return httpx.post(url + "api/v1/predict", json=body, timeout=60, **kw)


def test_answers_equal_the_single_process_server(ray_server, server):
    rng = random.Random(0)
    work = [{"texts": rng.sample(REVIEWS, rng.randint(1, 8)), "model": rng.choice(["tiny", "again"])}
            for _ in range(40)]
    answers = {}

    def client(i):
        for k in range(i, len(work), 8):
            answers[k] = _post(ray_server.url, work[k])

    before = httpx.get(ray_server.url + "metrics", timeout=60).text
    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for k, body in enumerate(work):
        local = _post(server.url, body).json()
        assert answers[k].status_code == 200, answers[k].text
        remote = answers[k].json()
        assert remote["model"] == local["model"]
        for a, b in zip(remote["results"], local["results"], strict=True):
            assert a.keys() == b.keys() and a["label"] == b["label"] and a["known_words"] == b["known_words"]
            assert (a["p_positive"] is None) == (b["p_positive"] is None)
            if a["p_positive"] is not None:
                assert a["p_positive"] == pytest.approx(b["p_positive"], abs=1e-6)
    # Every batch the replicas ran reaches the ingress's /metrics once, under its model.
    after = httpx.get(ray_server.url + "metrics", timeout=60).text
    for name in ("tiny", "again"):
        sent = sum(len(body["texts"]) for body in work if body["model"] == name)
        counted = [_metric(after, f"sentiment_batch_size_{part}", model=name)
                   - _metric(before, f"sentiment_batch_size_{part}", model=name) for part in ("sum", "count")]
        assert counted[0] == sent and 0 < counted[1] <= sent, (name, counted, sent)
        assert _metric(after, "sentiment_batch_wait_seconds_count", model=name) > 0


@pytest.mark.parametrize("body,status,error", BAD_BODIES, ids=[e for _, _, e in BAD_BODIES])
def test_errors_equal_the_single_process_server(ray_server, server, body, status, error):
    headers = {"content-type": "application/json"}
    remote = httpx.post(ray_server.url + "api/v1/predict", content=body, headers=headers, timeout=60)
    local = httpx.post(server.url + "api/v1/predict", content=body, headers=headers, timeout=60)
    assert (remote.status_code, remote.json()) == (local.status_code, local.json())
    assert remote.status_code == status


def test_the_other_routes_answer_the_same(ray_server, server):
    for path in ("healthz", "api/v1/models", "api/v1/nothing"):
        remote, local = httpx.get(ray_server.url + path, timeout=60), httpx.get(server.url + path, timeout=60)
        assert (remote.status_code, remote.json()) == (local.status_code, local.json()), path
    wrong = httpx.get(ray_server.url + "api/v1/predict", timeout=60)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST, OPTIONS"


def _descendants(root: int) -> dict[int, str]:
    """Processes below ``root`` (pid -> command line): the Ray cluster this server started, and no other."""
    parents, commands = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found[child] = commands.get(child, "")
                frontier.append(child)
    return found


def test_a_replica_killed_under_load_loses_no_accepted_request(ray_server):
    replicas = [pid for pid, command in _descendants(ray_server.proc.pid).items()
                if "ServeReplica:sentiment:model-0" in command]
    assert len(replicas) == 2, _descendants(ray_server.proc.pid)
    statuses, failures = [], []
    stop_at = time.monotonic() + 8

    def client(i):
        rng = random.Random(i)
        with httpx.Client(base_url=ray_server.url, timeout=60) as http:
            while time.monotonic() < stop_at:
                texts = rng.sample(REVIEWS, 3)
                response = http.post("api/v1/predict", json={"texts": texts})
                statuses.append(response.status_code)
                if response.status_code != 200 or len(response.json()["results"]) != 3:
                    failures.append(response.text)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(2)
    os.kill(replicas[0], signal.SIGKILL)
    for t in threads:
        t.join(120)
    assert failures == [] and len(statuses) > 20, (failures[:3], len(statuses))


def test_sigterm_stops_the_application_and_exits_0(ray_server):
    assert _post(ray_server.url, {"texts": ["loved it"]}).status_code == 200
    ray_server.proc.send_signal(signal.SIGTERM)
    assert ray_server.proc.wait(timeout=60) == 0, ray_server.log.read_text()
