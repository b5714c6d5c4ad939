"""``sentiment evaluate`` and ``sentiment behaviour``: models side by side on labelled data,
the TF-IDF baseline, and behaviour tests. Imports only the core."""
