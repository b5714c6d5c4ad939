"""sentiment: recurrent-network sentiment classifiers for movie reviews.

    >>> from sentiment import load_bundle
    >>> clf = load_bundle("models/bilstm")
    >>> clf.predict_proba(["A wonderful, moving film."])
"""
from .bundle import load_bundle
from .errors import SentimentError
from .predict import Classifier

__version__ = "0.1.0"
__all__ = ["load_bundle", "Classifier", "SentimentError", "__version__"]
