"""The model card: ``README.md`` in a bundle, made from its ``config.json`` alone.

Hugging Face model-card metadata (YAML front matter) for tools that read it, then plain
sections for people: what the model is for, how it was trained, how well it does, and
where it falls short. ``save_bundle`` writes it; ``write_card`` rewrites it for a bundle
whose ``config.json`` changed (``bench/accuracy.py --ship`` does).
"""
from __future__ import annotations

import json
from pathlib import Path

from .calibration import describe, describe_balance
from .files import write_text_atomic

CARD = "README.md"
IMDB = "stanfordnlp/imdb"
IMDB_PAGE = "<https://ai.stanford.edu/~amaas/data/sentiment/>"
# The figures a card lists for each measured split, in this order, when config.json has them.
SHOWN_METRICS = (("accuracy", "accuracy"), ("f1", "F1"), ("roc_auc", "ROC-AUC"), ("ece", "ECE"),
                 ("nll", "NLL"), ("brier", "Brier"))
TRAINING_OPTIONS = ("epochs", "batch_size", "lr", "weight_decay", "dropout", "word_dropout", "ema", "adversarial",
                    "pretrain", "pretrain_epochs", "seed")


def _trained_on_imdb(config: dict) -> bool:
    data = str((config.get("training") or {}).get("data") or IMDB)
    return data == IMDB or "imdb" in data.lower()


def _front_matter(config: dict) -> str:
    kind = config["model"]["kind"]
    metrics = config.get("metrics") or {}
    lines = ["---", "language: en", "library_name: pytorch", "pipeline_tag: text-classification",
             "license: apache-2.0",
             f"tags: [sentiment-analysis, text-classification, rnn, {kind}]"]
    if _trained_on_imdb(config):
        lines.append(f"datasets: [{IMDB}]")
    test = metrics.get("test") or {}
    shown = [(key, test[key]) for key, _ in SHOWN_METRICS if isinstance(test.get(key), (int, float))]
    if shown:
        dataset = ("IMDB", IMDB) if _trained_on_imdb(config) else ("test split", "custom")
        lines += ["model-index:", f"- name: sentiment-{kind}", "  results:",
                  "  - task: {type: text-classification, name: Sentiment classification}",
                  f"    dataset: {{name: {dataset[0]}, type: {dataset[1]}, split: test}}", "    metrics:"]
        lines += [f"    - {{type: {key}, value: {round(float(value), 6)}}}" for key, value in shown]
    lines.append("---")
    return "\n".join(lines)


def _figures(config: dict) -> list[str]:
    import math

    metrics = config.get("metrics") or {}
    splits = [(name, m) for name, m in metrics.items() if isinstance(m, dict) and "accuracy" in m]
    if not splits:
        return ["No evaluation is recorded in this bundle's config.json."]
    shown = [(key, title) for key, title in SHOWN_METRICS if any(key in m for _, m in splits)]
    rows = ["| data | reviews | " + " | ".join(title for _, title in shown) + " |",
            "|---|---|" + "---|" * len(shown)]
    for name, m in splits:
        n = f"{m['n']:,}" if isinstance(m.get("n"), int) else "?"
        # A figure a split cannot define is recorded as null (ROC-AUC of reviews of one class).
        defined = {key: isinstance(value, (int, float)) and math.isfinite(value) for key, value in m.items()}
        cells = [("not measured" if key not in m else "n/a" if not defined[key]
                  else f"{m[key]:.2%}" if key == "accuracy" else f"{m[key]:.4f}") for key, _ in shown]
        label = name if name != "short_text" else f"short reviews: {m['data']}" if m.get("data") else "short reviews"
        rows.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    calibration = config.get("calibration")
    rows.append("")
    if isinstance(calibration, dict) and calibration.get("method") in ("temperature", "length_temperature"):
        rows.append(f"Calibration: {describe(calibration)}. Every probability the bundle gives is calibrated.")
    else:
        rows.append(f"Calibration: {describe(calibration)}; the probabilities are the network's softmax as trained.")
    if describe_balance(calibration):
        rows.append(f"Also {describe_balance(calibration)}; the probabilities and figures above include them.")
    if "short_text" not in metrics:
        rows += ["", "Short text (one-sentence reviews): not measured for this bundle."]
    return rows


def _answers(config: dict) -> str:
    labels = config.get("labels") or ["negative", "positive"]
    if list(labels) == ["negative", "positive"]:
        return "P(positive)"
    return f"the probability of each of its {len(labels)} classes ({', '.join(f'`{c}`' for c in labels)})"


def card_markdown(config: dict) -> str:
    """The whole ``README.md`` of a bundle with this ``config.json``."""
    model, text = config["model"], config["text"]
    training = config.get("training") or {}
    trained = config.get("trained") or {}
    kind = model["kind"]
    data = training.get("data") or IMDB
    source = (f"the IMDB Large Movie Review data set (`{data}`): 25,000 training reviews, part of them held out "
              "for validation" if _trained_on_imdb(config) else f"`{data}`")
    options = ", ".join(f"`--{k.replace('_', '-')} {training[k]}`" for k in TRAINING_OPTIONS
                        if training.get(k) is not None)
    sections = [
        _front_matter(config), "",
        f"# sentiment `{kind}`", "",
        f"A `{kind}` recurrent classifier of the sentiment of English movie reviews: embedding "
        f"{model['embedding_dim']}, hidden size {model['hidden_size']}, {model['num_layers']} layer(s), over a "
        f"vocabulary of {text['vocab_size'] - 2:,} words plus `<unk>` and `<pad>`. It reads at most "
        f"{text['max_len']} words (the {text['truncate']} of a longer review) and answers "
        f"{_answers(config)}.", "",
        "## Intended use", "",
        "English movie reviews, from a sentence to a few paragraphs, scored with the `sentiment` package "
        "(`sentiment.load_bundle`, `python -m sentiment score`, `python serve.py`). Loading runs no code: "
        "the weights are safetensors, the rest JSON.", "",
        "## Training", "",
        f"Trained on {source}, on {config.get('device', 'an unrecorded device')}, finished "
        f"{trained.get('date', 'on an unrecorded date')} (best epoch {trained.get('best_epoch', '?')} of "
        f"{trained.get('epochs_run', '?')}).", "",
        f"Command: `{config.get('command', 'not recorded')}`", "",
        f"Recipe: {options or 'not recorded'}.", "",
        "## Evaluation", "",
        *_figures(config), "",
        "## Limitations", "",
        "- Trained on long IMDB reviews: short everyday text, other domains (products, restaurants) and "
        "other languages are outside what it learned, and its accuracy there is lower.",
        "- Words outside the vocabulary are read as `<unk>`; a text with no known word gets no verdict.",
        "- Sarcasm, mixed opinions and negation over long distances are often misread.",
        "- IMDB is for research use; the reviews carry the biases of the people who wrote them.", "",
        "## License", "",
        *_license(config), "",
    ]
    return "\n".join(sections)


def _license(config: dict) -> list[str]:
    """The weights' license, and whose terms cover the data they were trained on."""
    lines = ["The weights and this card: Apache License 2.0 (the `LICENSE` file of the `sentiment` repository)."]
    if _trained_on_imdb(config):
        lines.append("They were trained on the IMDB Large Movie Review Dataset (Maas et al. 2011, \"Learning Word "
                     "Vectors for Sentiment Analysis\", ACL 2011), whose terms are its authors': the data is for "
                     f"research use; see the dataset's page, {IMDB_PAGE}.")
    else:
        lines.append("The data they were trained on (named under Training) comes under its own owners' terms.")
    return lines


def card_body(card: str) -> str:
    """The card without its front matter: what a person reads."""
    if card.startswith("---\n") and "\n---\n" in card[4:]:
        return card[4:].split("\n---\n", 1)[1].lstrip("\n")
    return card


def write_card(folder: str | Path, config: dict | None = None) -> Path:
    """Write ``folder/README.md`` from ``config`` (default: the folder's own config.json), atomically."""
    folder = Path(folder)
    if config is None:
        config = json.loads((folder / "config.json").read_text())
    return write_text_atomic(folder / CARD, card_markdown(config))
