"""The Gradio page: live prediction, why the model decided, what it read, file scoring.

Every view calls :class:`Classifier` (``predict_proba``, ``explain``) and the file tab
calls the batch scorer's own ``score``; nothing here touches the model or tokenizer.
"""
from __future__ import annotations

import os

# Before gradio is imported: no telemetry or version checks, so the page works offline.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import csv  # noqa: E402
import gc  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from .errors import SentimentError  # noqa: E402
from .predict import Classifier  # noqa: E402

EXAMPLES = [
    "One of the best films I have seen this year. The cast is superb and the ending moved me to tears.",
    "A waste of two hours. The plot makes no sense, the dialogue is wooden and I nearly fell asleep.",
    "The photography is gorgeous and the lead gives it everything, but the script is thin and the last "
    "act drags on far too long.",
]
TABLE_PREVIEW_ROWS = 1000
CONTRIBUTION_COLORS = {"strong positive": "#1f9d55", "positive": "#a3e4b8", "negative": "#f8b4b4",
                       "strong negative": "#d92d2d"}


def contribution_class(score: float | None, scale: float) -> str | None:
    """A word's highlight: strong (over half the largest effect) or mild; tiny effects stay plain."""
    if score is None or scale == 0 or abs(score) < 0.1 * scale:
        return None
    side = "positive" if score > 0 else "negative"
    return f"strong {side}" if abs(score) >= 0.5 * scale else side


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
    max_upload_mb: int = field(default=20, metadata={"help": "largest file accepted by the file tab, in MB",
                                                     "metavar": "MB"})
    precision: str = field(default="auto", metadata={
        "help": "auto: bfloat16 where the CPU/GPU has it, else float32", "choices": ("auto", "float32", "bfloat16")})
    concurrency: int = field(default=4, metadata={"help": "requests computed at once; the rest wait in a queue",
                                                  "metavar": "N"})

    def __post_init__(self):
        for name in ("port", "max_chars", "max_upload_mb", "concurrency"):
            if getattr(self, name) < 1:
                raise SentimentError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")


def model_card(name: str, clf: Classifier) -> str:
    c = clf.config
    test = (c.get("metrics") or {}).get("test") or {}
    trained = c.get("trained") or {}
    accuracy = f"{test['accuracy']:.2%} on {test.get('n', '?')} test reviews" if "accuracy" in test else "not recorded"
    return "\n".join([
        f"**{name}** (`{clf.path}`)",
        f"- model: `{c['model']['kind']}`, embedding {c['model']['embedding_dim']}, hidden "
        f"{c['model']['hidden_size']}, {c['model']['num_layers']} layer(s)",
        f"- test accuracy: {accuracy}",
        f"- vocabulary: {c['text']['vocab_size'] - 2:,} words + `<unk>`, `<pad>`; reads at most "
        f"{c['text']['max_len']} tokens ({c['text']['truncate']} of a longer review)",
        f"- trained: {trained.get('date', 'unknown date')} on {c.get('device', 'unknown device')}",
    ])


def build_app(classifiers: dict[str, Classifier], config: ServeConfig | None = None):
    """The page, for ``classifiers`` (name -> Classifier; the first is the main model)."""
    import gradio as gr

    from .score import ScoreConfig, score

    config = config or ServeConfig()
    if not classifiers:
        raise SentimentError("no model to serve")
    names = list(classifiers)
    main = classifiers[names[0]]

    def check(text: str | None) -> str:
        text = text or ""
        if len(text) > config.max_chars:
            raise gr.Error(f"The review is {len(text):,} characters long; the limit is {config.max_chars:,}.")
        return text

    def predict(text: str) -> dict[str, float]:
        p = main.predict_proba([check(text)])[0]
        return {label: float(v) for label, v in zip(main.classes_, p)}

    def explain(text: str):
        text = check(text)
        if not text.strip():
            return [], "Type or paste a review to see which words drove the prediction."
        e = main.explain(text)
        scale = max((abs(c) for c in e.contributions), default=0.0)
        pieces = [(piece, contribution_class(score, scale)) for piece, score in e.highlighted()]
        pos = ", ".join(f"**{w}** (+{c:.3f})" for w, c in e.top(5, positive=True)) or "none"
        neg = ", ".join(f"**{w}** ({c:.3f})" for w, c in e.top(5, positive=False)) or "none"
        summary = (f"Towards positive: {pos}.  \nTowards negative: {neg}.  \n"
                   f"<small>Method: {e.method}: each number is how much P(positive) drops when that word "
                   "is left out.</small>")
        return pieces, summary

    def seen(text: str):
        text = check(text)
        if not text.strip():
            return [], ""
        e = main.read(text)
        tokens = [(w.lower() + " ", "cut" if not k else ("<unk>" if not known else "read"))
                  for w, known, k in zip(e.words, e.known, e.kept)]
        unknown = sum(1 for known, k in zip(e.known, e.kept) if k and not known)
        notice = f"{sum(e.kept)} of {len(e.words)} words read; {unknown} unknown (read as `<unk>`)."
        if e.truncated:
            notice += (f" **The review is longer than {main.encoder.max_len} words: the model read only its "
                       f"{main.encoder.truncate}; the rest is marked as cut.**")
        return tokens, notice

    def compare(text: str):
        text = check(text)
        rows = []
        for name, clf in classifiers.items():
            p = float(clf.predict_proba([text])[0, 1])
            rows.append([name, clf.config["model"]["kind"], clf.classes_[int(p >= 0.5)], round(p, 4)])
        return rows

    def score_file(path: str | None):
        if not path:
            raise gr.Error("Choose a .txt, .csv or .jsonl file first.")
        out = Path(tempfile.mkdtemp(prefix="sentiment-scores-")) / f"{Path(path).stem}-scored.csv"
        try:
            counts = score(ScoreConfig(inputs=[path], out=str(out), on_error="skip", progress=False), main)
        except SentimentError as exc:
            raise gr.Error(str(exc)) from None
        with open(out, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            rows = [row for _, row in zip(range(TABLE_PREVIEW_ROWS), reader)]
        note = counts.line()
        if counts.written > TABLE_PREVIEW_ROWS:
            note += f" (the table shows the first {TABLE_PREVIEW_ROWS:,}; the CSV has all)"
        import pandas as pd

        return pd.DataFrame(rows, columns=header), str(out), note

    with gr.Blocks(title="sentiment: movie review classifier") as demo:
        gr.Markdown("# Movie review sentiment\nType a review: the prediction updates as you type.")
        with gr.Tab("Review"):
            with gr.Row():
                with gr.Column(scale=3):
                    review = gr.Textbox(label="Review", lines=6, max_length=config.max_chars, elem_id="review",
                                        placeholder="Paste or type a movie review...")
                    button = gr.Button("Predict", variant="primary", elem_id="predict")
                    gr.Examples(EXAMPLES, inputs=review, label="Examples (click one)")
                with gr.Column(scale=2):
                    label = gr.Label(label=f"Prediction ({names[0]})", num_top_classes=2, elem_id="label")
            gr.Markdown("### Why: the words that pushed the score")
            why = gr.HighlightedText(label="Words that pushed towards positive (green) or negative (red)",
                                     elem_id="why", show_legend=True, color_map=CONTRIBUTION_COLORS)
            why_summary = gr.Markdown(elem_id="why-summary")
            gr.Markdown("### What the model saw")
            saw = gr.HighlightedText(label="Words after preprocessing", elem_id="saw", show_legend=True,
                                     color_map={"read": "#d0e4ff", "<unk>": "#ffd27f", "cut": "#cccccc"})
            saw_notice = gr.Markdown(elem_id="saw-notice")
            compare_table = gr.Dataframe(headers=["model", "kind", "prediction", "p_positive"],
                                         label="Compare: every loaded model", elem_id="compare",
                                         visible=len(classifiers) > 1, interactive=False)
        with gr.Tab("Score a file"):
            gr.Markdown(f"Upload a `.txt` (one review per line), `.csv`/`.tsv` (a `text` or `review` column) "
                        f"or `.jsonl` file, up to {config.max_upload_mb} MB. Malformed rows become error rows.")
            upload = gr.File(label="Reviews", file_types=[".txt", ".csv", ".tsv", ".jsonl"], elem_id="upload")
            score_button = gr.Button("Score file", variant="primary", elem_id="score")
            score_note = gr.Markdown(elem_id="score-note")
            scored = gr.Dataframe(label="Scored rows", interactive=False, elem_id="scored")
            download = gr.File(label="Download the scores (CSV)", elem_id="download")
        with gr.Tab("Model card"):
            for name, clf in classifiers.items():
                gr.Markdown(model_card(name, clf))

        # The button's events are the public API; typing runs the same functions privately.
        # always_last: while one prediction runs, only the newest text waits (a debounce).
        views = [(predict, label, "predict"), (explain, [why, why_summary], "explain"),
                 (seen, [saw, saw_notice], "seen")]
        if len(classifiers) > 1:
            views.append((compare, compare_table, "compare"))
        for fn, outputs, name in views:
            button.click(fn, review, outputs, api_name=name, trigger_mode="always_last",
                         api_visibility="private" if name == "seen" else "public")
            review.input(fn, review, outputs, api_name=f"{name}_live", api_visibility="private",
                         trigger_mode="always_last", show_progress="hidden")
        score_button.click(score_file, upload, [scored, download, score_note], api_name="score_file")
    demo.queue(default_concurrency_limit=config.concurrency)
    return demo


def load_models(paths: list[str], precision: str = "float32") -> dict[str, Classifier]:
    from .bundle import default_model_dir, load_bundle, model_names

    paths = paths or [str(default_model_dir())]
    return {name: load_bundle(path, precision=precision) for name, path in zip(model_names(paths), paths)}


def launch(config: ServeConfig, **extra):
    classifiers = load_models(config.models, config.precision)
    for clf in classifiers.values():
        clf.warm_up()
    demo = build_app(classifiers, config)
    # What is loaded now lives as long as the server: keep it out of the garbage
    # collector's full passes, which otherwise pause every request now and then.
    gc.collect()
    gc.freeze()
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the web server itself binds
        try:
            probe.bind((config.host, config.port))
        except OSError as exc:
            raise SentimentError(f"cannot listen on {config.host}:{config.port} ({exc.strerror}); "
                                 "pass another --port") from None
    print(f"serving {', '.join(f'{n} ({c.path})' for n, c in classifiers.items())} on "
          f"http://{config.host}:{config.port}/ (Ctrl-C to stop{'' if config.share else '; --share for a public link'})",
          flush=True)
    return demo.launch(server_name=config.host, server_port=config.port, share=config.share, ssr_mode=False,
                       max_file_size=f"{config.max_upload_mb}mb", quiet=not config.share, **extra)
