"""The page against callers who do not use it as the page does: raw HTTP to its Gradio API.

Every test talks to ``python serve.py`` over loopback, as any client on the network could."""
import asyncio
import json
import os
from pathlib import Path

import pytest

from conftest import Server

httpx = pytest.importorskip("httpx")
pytest.importorskip("gradio")

POSITIVE_REVIEW = "wonderful superb the film was loved and brilliant the plot moving"
SECRET = "a private line of the server that no caller may read"


def call(url: str, endpoint: str, data: list) -> str:
    """POST ``data`` to one of the page's events and return its result stream (JSON as sent, escapes kept)."""
    with httpx.Client(base_url=url, timeout=60) as http:
        posted = http.post(f"gradio_api/call/{endpoint}", content=json.dumps({"data": data}),
                           headers={"content-type": "application/json"})
        assert posted.status_code == 200, posted.text
        return http.get(f"gradio_api/call/{endpoint}/{posted.json()['event_id']}").text


def result(stream: str):
    """The data of the stream's last event, and whether it completed."""
    event = stream.strip().split("\n\n")[-1]
    kind, data = event.split("\n", 1)
    return kind == "event: complete", json.loads(data.removeprefix("data: "))


def file_data(path) -> dict:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}, "orig_name": "reviews.csv"}


@pytest.fixture(scope="module")
def hostile(tiny_model, tmp_path_factory):
    """A server whose upload folder (GRADIO_TEMP_DIR) holds files it never received, on one slot."""
    root = tmp_path_factory.mktemp("hostile")
    uploads, outside = root / "uploads", root / "outside"
    uploads.mkdir()
    outside.mkdir()
    saved = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(uploads)
    try:
        running = Server("--model", tiny_model, "--precision", "float32", "--max-chars", "5000",
                         "--concurrency", "1", log=root / "serve.log")
    finally:
        os.environ.pop("GRADIO_TEMP_DIR") if saved is None else os.environ.__setitem__("GRADIO_TEMP_DIR", saved)
    running.wait_ready()
    running.uploads, running.outside = uploads, outside
    yield running
    running.stop()
    # A refused path left in Gradio's list of files to delete made its clean-up fail.
    assert "shutdown failed" not in running.log.read_text()


@pytest.mark.slow
def test_file_tab_scores_only_files_uploaded_to_it(hostile):
    secret = hostile.outside / "secret.csv"
    secret.write_text(f"text\n{SECRET}\n")
    planted = hostile.uploads / "planted" / "planted.csv"  # in the upload folder, never uploaded
    planted.parent.mkdir()
    planted.write_text(f"text\n{SECRET}\n")
    link = hostile.uploads / "planted" / "link.csv"
    link.symlink_to(secret)
    refused = [secret, Path("/etc/..") / str(secret).lstrip("/"), hostile.uploads / ".." / "outside" / "secret.csv",
               planted, link, hostile.uploads / "planted", "/etc/passwd", "/nonexistent/reviews.csv"]
    for path in refused:
        stream = call(hostile.url, "score_file", [file_data(path)])
        done, data = result(stream)
        assert not done and SECRET not in stream, (path, stream)
    # A file sent through the upload route, as the page and gradio_client send it, is scored.
    with httpx.Client(base_url=hostile.url, timeout=60) as http:
        [uploaded] = http.post("gradio_api/upload", files={"files": ("mine.csv", f"text\n{POSITIVE_REVIEW}\n")}).json()
    done, (table, download, note) = result(call(hostile.url, "score_file", [file_data(uploaded)]))
    assert done and "rows written: 1" in note
    assert [row[table["headers"].index("prediction")] for row in table["data"]] == ["positive"]


@pytest.mark.parametrize("endpoint", ["predict", "explain", "seen", "compare"])
def test_a_lone_surrogate_is_read_as_a_replacement_character(server, endpoint):
    done, data = result(call(server.url, endpoint, [f"\ud800 {POSITIVE_REVIEW} \udfff"]))
    assert done, data
    if endpoint == "predict":
        assert data[0]["label"] == "positive"
    elif endpoint == "compare":
        assert {row[2] for row in data[0]["data"]} == {"positive"}
    elif endpoint == "seen":  # the tokenizer drops it, as any other symbol
        assert data[1].startswith("11 of 11 words read")
    else:
        assert "".join(piece["token"] for piece in data[0]).count("\ufffd") == 2


def test_a_lone_surrogate_alone_is_shown_back_as_a_replacement_character(server):
    done, data = result(call(server.url, "explain", ["\ud800"]))
    assert done, data
    assert [piece["token"] for piece in data[0]] == ["\ufffd"] and data[1].startswith("No verdict")


def test_api_page_lists_the_documented_endpoints_and_model_card_names_no_path(server, tiny_model):
    info = httpx.get(server.url + "gradio_api/info", timeout=30).json()
    assert sorted(info["named_endpoints"]) == ["/explain", "/predict"]
    config = httpx.get(server.url + "config", timeout=30).text
    assert "## tiny" in config and "## again" in config
    assert str(tiny_model) not in config and str(tiny_model.parent) not in config


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


@pytest.mark.slow
def test_unfetched_calls_neither_stop_the_page_nor_keep_memory(hostile):
    """2,300 calls whose results are never fetched, 50 at a time: past Gradio's 2,000 sessions."""
    text = (POSITIVE_REVIEW + " ") * 70  # about 4,600 characters

    def predict() -> bool:
        return result(call(hostile.url, "predict", [POSITIVE_REVIEW]))[0]

    async def storm(calls: int) -> dict:
        statuses: dict[int, int] = {}
        slots = asyncio.Semaphore(50)
        async with httpx.AsyncClient(base_url=hostile.url, timeout=60) as http:
            async def post(i: int):
                async with slots:
                    answer = await http.post("gradio_api/call/explain", json={"data": [f"{text} {i}"]})
                    statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            await asyncio.gather(*(post(i) for i in range(calls)))
        return statuses

    for _ in range(30):
        assert predict()
    before, logged = rss_mb(hostile.proc.pid), len(hostile.log.read_text())
    statuses = asyncio.run(storm(2300))
    assert set(statuses) <= {200, 503}, statuses  # 503: the queue is full, come back later
    for _ in range(30):
        assert predict()  # the queue drained and answers as before
    after = rss_mb(hostile.proc.pid)
    assert after - before < 60, (before, after, statuses)
    assert "Traceback" not in hostile.log.read_text()[logged:]
