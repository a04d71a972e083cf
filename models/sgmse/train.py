"""``python -m models.sgmse.train --help``: train the noise-conditioned score model."""

from __future__ import annotations

import sys

from ._train import main

if __name__ == "__main__":
    sys.exit(main())
