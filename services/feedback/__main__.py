"""python -m services.feedback [--help]"""

import sys

from services.feedback.server import main

if __name__ == "__main__":
    sys.exit(main())
