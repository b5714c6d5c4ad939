"""The Gradio page: live prediction, why the model decided, what it read, file scoring.

Every view calls :class:`Classifier` (``predict_proba``, ``explain``) and the file tab
calls the batch scorer's own ``score``; nothing here touches the model or tokenizer.
"""
from __future__ import annotations

import os

# Before gradio is imported: no telemetry or version checks, so the page works offline.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Gradio's queue summarises every event it has recorded (up to 10,000, in a pandas table)
# after each event, for its monitoring page: on a busy page that cost more CPU than the
# model and kept ~100 MB. Once per ANALYTICS_EVENTS events, over the last ANALYTICS_EVENTS.
ANALYTICS_EVENTS = 1000
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(ANALYTICS_EVENTS))
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", str(ANALYTICS_EVENTS))

import atexit  # noqa: E402
import csv  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import threading  # noqa: E402
from contextlib import nullcontext  # noqa: E402

from ..data import is_negative_positive  # noqa: E402
from ..errors import SentimentError  # noqa: E402
from ..options import check_whole  # noqa: E402
from .batcher import Batcher, BatchOptions, Busy  # noqa: E402
from .page_queue import queue_bounded  # noqa: E402
from ..predict import NOTHING_TO_JUDGE, PRECISIONS, Classifier  # noqa: E402
from ..readers import encodable  # noqa: E402

EXAMPLES = [
    "One of the best films I have seen this year. The cast is superb and the ending moved me to tears.",
    "A waste of two hours. The plot makes no sense, the dialogue is wooden and I nearly fell asleep.",
    "The photography is gorgeous and the lead gives it everything, but the script is thin and the last "
    "act drags on far too long.",
]
# The page's events that answer API clients; the others serve the page alone.
VISIBILITY = {"predict": "public", "explain": "public", "compare": "undocumented"}
FILE_TYPES = (".txt", ".csv", ".tsv", ".jsonl")
TABLE_PREVIEW_ROWS = 1000
# Scored files of the file tab, and Gradio's copies of them and of uploads, are deleted
# once this old (checked at each scoring, and by Gradio every as many seconds).
RESULT_TTL_S = 600
NOT_UPLOADED = "Upload the file on this page first: only files uploaded to this server are scored."
CONTRIBUTION_COLORS = {"strong positive": "#1f9d55", "positive": "#a3e4b8", "negative": "#f8b4b4",
                       "strong negative": "#d92d2d"}


def merge_runs(pieces: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """Adjacent pieces of the same class as one: the page shows the same, sessions keep less."""
    merged: list[tuple[str, str | None]] = []
    for piece, kind in pieces:
        if merged and merged[-1][1] == kind:
            merged[-1] = (merged[-1][0] + piece, kind)
        else:
            merged.append((piece, kind))
    return merged


def remove_older(folder: Path, seconds: float) -> None:
    """Delete the files in ``folder`` last changed over ``seconds`` ago."""
    limit = time.time() - seconds
    for path in folder.glob("*/*"):
        try:
            if path.stat().st_mtime < limit:
                shutil.rmtree(path.parent, ignore_errors=True)
        except OSError:
            pass


# A model whose classes are not negative/positive: a word pushes towards the class it predicts, or away.
VERDICT_COLORS = {"strong towards": "#1f9d55", "towards": "#a3e4b8", "away": "#f8b4b4", "strong away": "#d92d2d"}


def contribution_class(score: float | None, scale: float, sides: tuple[str, str] = ("positive", "negative")) -> str | None:
    """A word's highlight: strong (over half the largest effect) or mild; tiny effects stay plain.
    ``sides``: the names of pushing up and down (``towards``/``away`` for models of other classes)."""
    if score is None or scale == 0 or abs(score) < 0.1 * scale:
        return None
    side = sides[0] if score > 0 else sides[1]
    return f"strong {side}" if abs(score) >= 0.5 * scale else side


def speaks_sentiment(clf: Classifier) -> bool:
    """Whether the page may speak of positive and negative: the model's classes are those."""
    return is_negative_positive(clf.labels)


@dataclass
class ServeConfig:
    """Options of ``python serve.py``."""

    models: list[str] = field(default_factory=list, metadata={"cli": False})
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to listen on (0.0.0.0 makes the page reachable from other machines)", "metavar": "ADDR"})
    port: int = field(default=7860, metadata={"help": "port to listen on", "metavar": "N"})
    share: bool = field(default=False, metadata={"help": "also open a public gradio.live share link"})
    max_chars: int = field(default=100_000, metadata={"help": "longest review accepted, in characters",
                                                      "metavar": "N"})
    max_upload_mb: int = field(default=20, metadata={
        "help": "largest file accepted by the file tab, and largest request body, in MB", "metavar": "MB"})
    max_rows: int = field(default=10_000, metadata={
        "help": "most rows scored per file in the file tab (the score command takes files of any size)",
        "metavar": "N"})
    max_batch: int = field(default=128, metadata={"help": "most texts in one JSON API request (run as one batch)",
                                                  "metavar": "N"})
    precision: str = field(default="auto", metadata={
        "help": "auto: bfloat16 where the CPU/GPU has it, else float32", "choices": PRECISIONS})
    # One computation per core: each runs on one thread, and on 2 cores 4 of them took turns
    # (python bench/serve.py --concurrency 4 against 2, three and two runs: 20 clients
    # saturating the API got 128-160 requests/s against 176-189, and the page's p99 at 40
    # requests/s was 226-874 ms against 49-161 ms).
    concurrency: int = field(default=max(1, min(4, os.cpu_count() or 1)), metadata={
        "help": "requests computed at once, one CPU thread each; the rest wait in a queue "
                "(default: the machine's cores, at most 4)", "metavar": "N"})
    max_batch_size: int = field(default=64, metadata={
        "help": "most texts in one forward pass of the model: texts of concurrent requests (API and page) "
                "are scored together up to this many", "metavar": "N"})
    batch_wait_ms: float = field(default=2.0, metadata={
        "help": "while the model is busy, how long a batch waits for more texts before it runs "
                "(0: never wait; a lone request never waits)", "metavar": "MS"})
    max_queue: int = field(default=1024, metadata={
        "help": "texts waiting for the model, per model, past which requests are refused "
                "(503, try again) instead of queued", "metavar": "N"})
    request_timeout_s: float = field(default=30.0, metadata={
        "help": "longest a request waits for the model before it is answered 503 (busy)", "metavar": "S"})
    engine: str = field(default="local", metadata={
        "help": "local: this process serves page and API; ray: the JSON API as a Ray Serve application "
                "(pip install 'sentiment[ray]'), without the page", "choices": ("local", "ray")})
    replicas: int = field(default=1, metadata={"help": "with --engine ray: copies of each model, each a "
                                                       "Ray Serve replica", "metavar": "N"})
    address: str | None = field(default=None, metadata={
        "help": "with --engine ray: the cluster to join (auto: the one running here; default: start a local one)",
        "metavar": "ADDR"})
    cors_origin: str | None = field(default=None, metadata={
        "help": "web pages allowed to call the server from a browser, as origins separated by commas "
                "(such as https://example.org,http://localhost:3000); none by default", "metavar": "ORIGINS"})

    def __post_init__(self):
        check_whole(self, ("port", "max_chars", "max_upload_mb", "max_batch", "max_rows", "concurrency",
                           "max_batch_size", "max_queue", "replicas"))
        # Written so that NaN fails too.
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise SentimentError(f"--batch-wait-ms must be between 0 and 10000 (got {self.batch_wait_ms})")
        if not 0 < self.request_timeout_s <= 3600:
            raise SentimentError(f"--request-timeout-s must be above 0 and at most 3600 (got {self.request_timeout_s})")
        if self.max_batch > self.max_queue:
            # A request must fit in the queue when it is empty, or "try again" would never work.
            raise SentimentError(f"--max-queue ({self.max_queue:,}) must be at least --max-batch ({self.max_batch:,})")
        if self.engine == "local" and (self.address or self.replicas != 1):
            raise SentimentError("--address and --replicas are options of --engine ray")
        if self.engine == "ray" and self.share:
            raise SentimentError("--share opens the page, which --engine ray does not serve (it serves the JSON API)")
        if self.port > 65535:
            raise SentimentError(f"--port must be at most 65535 (got {self.port})")


def card_text(clf: Classifier) -> str:
    """The bundle's model card (its README.md, else one made from its config.json), for people."""
    from ..card import CARD, card_body, card_markdown

    path = Path(clf.path) / CARD if clf.path else None
    try:
        card = path.read_text(encoding="utf-8") if path and path.is_file() else card_markdown(clf.config)
    except (OSError, UnicodeDecodeError):
        card = card_markdown(clf.config)
    return card_body(card)


class Views:
    """What the page computes, one method per view; every model call passes the shared gate."""

    def __init__(self, classifiers: dict[str, Classifier], config: ServeConfig, gate, batchers: dict[str, Batcher]):
        self.classifiers, self.config, self.gate, self.batchers = classifiers, config, gate, batchers
        self.main_name = next(iter(classifiers))
        self.main = next(iter(classifiers.values()))
        # The compare table shows P(positive) when every model has it, else the prediction's probability.
        self.compare_p_positive = all(speaks_sentiment(c) for c in classifiers.values())
        self.results = Path(tempfile.mkdtemp(prefix="sentiment-scores-"))
        self.uploads: set[str] = set()  # the page's own sets, once it is built
        self.temp_file_sets: list[set[str]] = []
        atexit.register(shutil.rmtree, self.results, ignore_errors=True)

    @staticmethod
    def refuse(message: str):
        # A user's mistake: said on the page, not logged as a server traceback.
        import gradio as gr

        return gr.Error(message, print_exception=False)

    def check(self, text: str | None) -> str:
        # Half a UTF-16 pair ("\ud800" in JSON) becomes U+FFFD here, as the model reads it, so
        # no answer that shows the text back (a review with no known word) carries it either.
        text = encodable(text or "")
        if len(text) > self.config.max_chars:
            raise self.refuse(f"The review is {len(text):,} characters long; the limit is {self.config.max_chars:,}.")
        return text

    def predict(self, text: str) -> dict[str, float] | str:
        text = self.check(text)
        result = self.batched(self.main_name, text)
        if not result.judged[0]:
            return NOTHING_TO_JUDGE
        return dict(zip(self.main.labels, result.probabilities[0].tolist()))

    def batched(self, name: str, text: str):
        """The scores of one text, computed with the texts of every other caller of the same model."""
        try:
            return self.batchers[name].scores([text])
        except Busy:
            raise self.refuse("The server is busy: try again in a moment.") from None

    def explain(self, text: str):
        text = self.check(text)
        if not text.strip():
            return [], "Type or paste a review to see which words drove the prediction."
        with self.gate:
            e = self.main.explain(text)
        if not any(k and known for k, known in zip(e.kept, e.known)):
            return [(text, None)], f"No verdict, {NOTHING_TO_JUDGE}: every word is outside the vocabulary."
        scale = max((abs(c) for c in e.contributions), default=0.0)
        sentiment = speaks_sentiment(self.main)
        sides = ("positive", "negative") if sentiment else ("towards", "away")
        pieces = merge_runs([(piece, contribution_class(score, scale, sides)) for piece, score in e.highlighted()])
        pos = ", ".join(f"**{w}** (+{c:.3f})" for w, c in e.top(5, positive=True)) or "none"
        neg = ", ".join(f"**{w}** ({c:.3f})" for w, c in e.top(5, positive=False)) or "none"
        if sentiment:
            summary = f"Towards positive: {pos}.  \nTowards negative: {neg}.  \n"
        else:
            summary = (f"Predicted **{e.towards}** (probability {e.probability:.3f}).  \nTowards {e.towards}: {pos}.  \n"
                       f"Away from {e.towards}: {neg}.  \n")
        summary += (f"<small>Method: {e.method}: each number is how much P({e.towards}) drops when that word "
                    "is left out.</small>")
        return pieces, summary

    def seen(self, text: str):
        text = self.check(text)
        if not text.strip():
            return [], ""
        with self.gate:
            e = self.main.read(text)
        tokens = merge_runs([(w.lower() + " ", "cut" if not k else ("<unk>" if not known else "read"))
                             for w, known, k in zip(e.words, e.known, e.kept)])
        unknown = sum(1 for known, k in zip(e.known, e.kept) if k and not known)
        notice = f"{sum(e.kept)} of {len(e.words)} words read; {unknown} unknown (read as `<unk>`)."
        if e.truncated:
            notice += (f" **The review is longer than {self.main.encoder.max_len} words: the model read only its "
                       f"{self.main.encoder.truncate}; the rest is marked as cut.**")
        return tokens, notice

    def compare(self, text: str):
        text = self.check(text)
        rows = []
        for name, clf in self.classifiers.items():
            [result] = self.batched(name, text).results()
            if result["label"] is None:
                rows.append([name, clf.config["model"]["kind"], NOTHING_TO_JUDGE, None])
            else:
                rows.append([name, clf.config["model"]["kind"], result["label"],
                             round(result["p_positive"] if self.compare_p_positive else result["score"], 4)])
        return rows

    def uploaded(self, path: str) -> bool:
        """Whether ``path`` is a file this server's upload route received.

        A caller of the page's API names the file by its path on the server, so any path
        can arrive here; only the paths the upload route handed out are read. Links and
        ``..`` are resolved on both sides first.
        """
        real = os.path.realpath(path)
        return os.path.isfile(real) and any(os.path.realpath(p) == real for p in list(self.uploads))

    def score_file(self, upload: dict | str | None):
        """Score an uploaded file: ``upload`` is the file input's value as sent (its path on the server)."""
        from ..batch import TEXT_COLUMN_HINT, Counts, at_most, our_columns, read_inputs, write_scored
        from ..outputs import Output

        path = upload.get("path") if isinstance(upload, dict) else upload
        if not path or not isinstance(path, str):
            raise self.refuse("Choose a .txt, .csv or .jsonl file first.")
        if not self.uploaded(path):
            # Gradio has already listed the path among the files it deletes when they
            # age; left there, a folder (the upload folder itself, say) would stop that
            # cleaning for good, and a file would be deleted that no upload made.
            for files in self.temp_file_sets:
                files.discard(os.path.abspath(path))
            raise self.refuse(NOT_UPLOADED)
        if Path(path).suffix.lower() not in FILE_TYPES:
            raise self.refuse(f"{Path(path).name}: choose a .txt, .csv, .tsv or .jsonl file.")
        remove_older(self.results, RESULT_TTL_S)
        out = Path(tempfile.mkdtemp(dir=self.results)) / f"{Path(path).stem}-scored.csv"
        try:
            counts = Counts()
            # The source column names the file as the user called it, not the server's copy.
            records = at_most(read_inputs([path], names=[Path(path).name]), self.config.max_rows)
            with self.gate:
                write_scored(self.main, records, Output("csv", str(out), "the scored file", list(our_columns(self.main.labels))),
                             counts, on_error="skip")
        except SentimentError as exc:
            shutil.rmtree(out.parent, ignore_errors=True)
            raise self.refuse(str(exc).replace(TEXT_COLUMN_HINT, "name the column text or review")) from None
        with open(out, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            rows = [row for _, row in zip(range(TABLE_PREVIEW_ROWS), reader)]
        note = counts.line()
        if counts.written > TABLE_PREVIEW_ROWS:
            note += f" (the table shows the first {TABLE_PREVIEW_ROWS:,}; the CSV has all)"
        import pandas as pd

        return pd.DataFrame(rows, columns=header), str(out), note


def batch_options(config: ServeConfig) -> BatchOptions:
    return BatchOptions(max_batch_size=config.max_batch_size, wait_s=config.batch_wait_ms / 1000,
                        max_queue=config.max_queue, timeout_s=config.request_timeout_s, workers=config.concurrency)


def make_batchers(classifiers: dict[str, Classifier], config: ServeConfig, gate=None,
                  observe=None) -> dict[str, Batcher]:
    """One batcher per model, with the options of ``config``; ``observe(name)`` gives each its observer."""
    options = batch_options(config)
    return {name: Batcher(clf, options, gate, observe(name) if observe else None)
            for name, clf in classifiers.items()}


def build_app(classifiers: dict[str, Classifier], config: ServeConfig | None = None,
              gate: threading.Semaphore | None = None, batchers: dict[str, Batcher] | None = None):
    """The page, for ``classifiers`` (name -> Classifier; the first is the main model).

    ``gate`` bounds the model computations running at once; the server shares one gate
    between this page and its JSON API, so --concurrency holds for both together, and
    the same ``batchers`` (one per model, made here when not given), so that texts from
    both are scored in shared batches.
    """
    import gradio as gr

    config = config or ServeConfig()
    if not classifiers:
        raise SentimentError("no model to serve")
    gate = gate or nullcontext()
    views = Views(classifiers, config, gate, batchers or make_batchers(classifiers, config, gate))
    names = list(classifiers)
    with gr.Blocks(title="sentiment: movie review classifier", delete_cache=(RESULT_TTL_S, RESULT_TTL_S)) as demo:
        # Gradio records here each path its upload route hands out (and forgets it with
        # the file, after RESULT_TTL_S).
        views.uploads, views.temp_file_sets = demo.upload_file_set, demo.temp_file_sets
        gr.Markdown("# Movie review sentiment\nType a review: the prediction updates as you type.")
        with gr.Tab("Review"):
            review, button, outputs = _review_tab(names[0], config, compare=len(classifiers) > 1, views=views)
        with gr.Tab("Score a file"):
            upload, score_button, file_outputs = _file_tab(config)
        with gr.Tab("Model card"):
            for name, clf in classifiers.items():
                # The model's name, not its path: where files lie on the server is not for callers.
                gr.Markdown(f"## {name}\n\n" + card_text(clf), elem_classes="model-card")
        # The button's /predict and /explain are the page's documented API; /compare and
        # /score_file answer clients but stay out of the API page (programs have
        # /api/v1 and the score command). Any change of the text (typing, paste, drop,
        # autofill, an example clicked) runs the same functions privately: .input fires
        # on key presses alone in this gradio. always_last: while one prediction runs,
        # only the newest text waits (a debounce). The page itself calls every event
        # over HTTP, so each one, private or not, takes the same limits.
        # Predictions wait in the model's batcher, not in the page's queue: as many run at
        # once as a batch takes, so the texts of many users are scored together.
        for name, target in outputs.items():
            fn = getattr(views, name)
            limit = config.max_batch_size if name in ("predict", "compare") else "default"
            button.click(fn, review, target, api_name=name, trigger_mode="always_last",
                         api_visibility=VISIBILITY.get(name, "private"), concurrency_limit=limit)
            review.change(fn, review, target, api_name=f"{name}_live", api_visibility="private",
                          trigger_mode="always_last", show_progress="hidden", concurrency_limit=limit)
        # Unprocessed: the path reaches score_file as sent, which checks it before reading.
        score_button.click(views.score_file, upload, file_outputs, api_name="score_file",
                           api_visibility="undocumented", preprocess=False)
    queue_bounded(demo, config.concurrency)
    # Gradio refuses a file input that its upload route did not receive only on a page
    # it launched itself; mounted in another app (as serve.py does), it would copy any
    # file of the server into its cache, a named pipe or /dev/zero freezing it. Marking
    # the page launched turns that check on however the page is served.
    demo.has_launched = True
    return demo


def _review_tab(main_name: str, config: ServeConfig, compare: bool, views: Views):
    """The review box, its button, and each view's outputs (by the name of the view)."""
    import gradio as gr

    with gr.Row():
        with gr.Column(scale=3):
            review = gr.Textbox(label="Review", lines=6, max_length=config.max_chars, elem_id="review",
                                placeholder="Paste or type a movie review...")
            button = gr.Button("Predict", variant="primary", elem_id="predict")
            gr.Examples(EXAMPLES, inputs=review, label="Examples (click one)")
        with gr.Column(scale=2):
            # One bar per class, each with its probability.
            label = gr.Label(label=f"Prediction ({main_name})", num_top_classes=len(views.main.labels), elem_id="label")
    gr.Markdown("### Why: the words that pushed the score")
    sentiment = speaks_sentiment(views.main)
    why = gr.HighlightedText(label="Words that pushed towards positive (green) or negative (red)" if sentiment else
                             "Words that pushed towards the predicted class (green) or away from it (red)",
                             elem_id="why", show_legend=True,
                             color_map=CONTRIBUTION_COLORS if sentiment else VERDICT_COLORS)
    why_summary = gr.Markdown(elem_id="why-summary")
    gr.Markdown("### What the model saw")
    saw = gr.HighlightedText(label="Words after preprocessing", elem_id="saw", show_legend=True,
                             color_map={"read": "#d0e4ff", "<unk>": "#ffd27f", "cut": "#cccccc"})
    saw_notice = gr.Markdown(elem_id="saw-notice")
    compare_table = gr.Dataframe(headers=["model", "kind", "prediction",
                                          "p_positive" if views.compare_p_positive else "probability of the prediction"],
                                 label="Compare: every loaded model", elem_id="compare",
                                 visible=compare, interactive=False)
    outputs = {"predict": label, "explain": [why, why_summary], "seen": [saw, saw_notice]}
    if compare:
        outputs["compare"] = compare_table
    return review, button, outputs


def _file_tab(config: ServeConfig):
    """The upload, its button, and the outputs of scoring it."""
    import gradio as gr

    gr.Markdown(f"Upload a `.txt` (one review per line), `.csv`/`.tsv` (a `text` or `review` column) "
                f"or `.jsonl` file, up to {config.max_upload_mb} MB and {config.max_rows:,} rows. "
                "Malformed rows become error rows. Files are deleted from the server after "
                f"{RESULT_TTL_S // 60} minutes; `python -m sentiment score` takes files of any size.")
    upload = gr.File(label="Reviews", file_types=list(FILE_TYPES), elem_id="upload")
    score_button = gr.Button("Score file", variant="primary", elem_id="score")
    note = gr.Markdown(elem_id="score-note")
    scored = gr.Dataframe(label="Scored rows", interactive=False, elem_id="scored")
    download = gr.File(label="Download the scores (CSV)", elem_id="download")
    return upload, score_button, [scored, download, note]
