"""``sentiment score``: the command around the core's batch scoring, and its Ray engine.
Imports only the core."""
