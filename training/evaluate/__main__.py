"""``python -m training.evaluate ...``: the same command as ``python -m training evaluate``."""

from __future__ import annotations

import logging
import sys

from training.evaluate.run import main

if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sys.exit(main())
