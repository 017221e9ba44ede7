"""What every infini-bench command line shares: bad input is one `error: ...` line and exit status 2."""

import argparse
import sys
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, `error: <message>`, and exit status 2."""

    def error(self, message):
        fail(message)


def fail(message) -> NoReturn:
    """Print `error: <message>` and exit with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
