"""python -m services.trainer [--help]"""

import sys

from services.trainer.server import main

if __name__ == "__main__":
    sys.exit(main())
