"""sentiment: recurrent-network sentiment classifiers for movie reviews.

    >>> from sentiment import load_bundle
    >>> clf = load_bundle("models/bilstm")
    >>> clf.predict_proba(["A wonderful, moving film."])
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
