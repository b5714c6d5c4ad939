"""Train a sentiment classifier: `python train.py --help`."""
import os
import signal
import sys


def _interrupted_while_starting(signum, frame):
    # KeyboardInterrupt raised inside torch's import was seen to leave half-imported modules
    # that then fail in odd ways (a RecursionError in numpy); nothing is written yet, so leave.
    sys.stderr.write("\ninterrupted while train.py started: nothing was written; the same command runs it again\n")
    os._exit(130)


if __name__ == "__main__":
    # Only where Python's default handler is in place: SIGINT ignored (a background job) stays so.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted_while_starting)
        # Importing the package and the training program loads torch and more: seconds in
        # which Ctrl-C is likely. From train() on, training says what Ctrl-C left.
        import sentiment.train.training  # noqa: F401
        from sentiment.cli import train_main

        signal.signal(signal.SIGINT, signal.default_int_handler)
    else:
        from sentiment.cli import train_main
    sys.exit(train_main())
