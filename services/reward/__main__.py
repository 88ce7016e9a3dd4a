"""python -m services.reward [--help]"""

import sys

from services.reward.server import main

if __name__ == "__main__":
    sys.exit(main())
