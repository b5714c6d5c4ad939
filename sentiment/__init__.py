"""sentiment: recurrent-network sentiment classifiers for movie reviews.

    >>> from sentiment import load_bundle
    >>> clf = load_bundle("models/bilstm")
    >>> clf.predict_proba(["A wonderful, moving film."])

The code is one core and four wings. The core, at the package root, is the path every
review travels, and every surface uses it:

    sentiment/
      readers.py, data.py     files and data sets -> rows (decoding, csv/tsv/jsonl/parquet, IMDB)
      text.py                 the tokenizer (tokenizer.json), excerpts
      models.py               embedding -> rnncell / rnn / lstm / bilstm -> head
      calibration.py          temperature by length; ECE, reliability bins
      predict.py              Classifier: predict_proba, __call__, explain
      bundle.py, card.py      save and load a bundle (no pickle), its model card
      batch.py, outputs.py    reviews from files scored as rows; csv/jsonl/parquet writers
      metrics.py, files.py, options.py, errors.py
      cli.py                  the `sentiment` command (train.py and serve.py call it)
      train/                  training: training.py (the program), recipes, loop, runs,
                              pretrain (language model), distributed (torchrun ranks), calibrate
      scoring/                `sentiment score`: score.py (the command), ray_score.py (Ray Data)
      serve/                  `sentiment serve`: app.py (the Gradio page), server.py (JSON API),
                              batcher.py (requests scored together), http_limits.py (what a
                              client may send), page_queue.py, ray_serve.py (--engine ray)
      evaluate/               evaluation.py, baseline.py (TF-IDF), behaviour.py (CheckList-style)

Imports run one way: a wing imports the core, never another wing (what two wings need
lives in the core); `cli.py` sits on top and imports a wing only when its command runs.
"""
from .errors import SentimentError

__version__ = "0.1.0"
__all__ = ["load_bundle", "Classifier", "SentimentError", "__version__"]


def __getattr__(name: str):
    # Imported on first use, not with the package: `python -m sentiment` and train.py then
    # reach their Ctrl-C and error handling before torch loads.
    if name == "load_bundle":
        from .bundle import load_bundle

        return load_bundle
    if name == "Classifier":
        from .predict import Classifier

        return Classifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
