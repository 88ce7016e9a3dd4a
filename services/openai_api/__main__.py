"""``python -m services.openai_api [--help]``: the OpenAI-compatible HTTP front door, until SIGTERM."""

import sys

from services.openai_api.server import main

if __name__ == "__main__":
    sys.exit(main())
