"""Start the web page: `python serve.py --help`."""
import sys

from sentiment.cli import serve_main

if __name__ == "__main__":
    sys.exit(serve_main())
