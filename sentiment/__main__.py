import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C before the command's own handling is in place
    sys.exit(130)

sys.exit(main())
