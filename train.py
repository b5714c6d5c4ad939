"""Train a sentiment classifier: `python train.py --help`."""
import sys

if __name__ == "__main__":
    try:
        # Importing the package loads torch, seconds in which Ctrl-C is likely.
        from sentiment.cli import train_main
    except KeyboardInterrupt:
        print("\ninterrupted before training began: nothing to resume; the same command starts the run again",
              file=sys.stderr)
        sys.exit(130)
    sys.exit(train_main())
