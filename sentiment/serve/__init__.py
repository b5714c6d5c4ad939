"""``sentiment serve``: the Gradio page and the JSON API in one process, and the limits on
what a client may send. Imports only the core."""
