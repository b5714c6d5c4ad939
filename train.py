"""Train a sentiment classifier: `python train.py --help`."""
import sys

from sentiment.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
