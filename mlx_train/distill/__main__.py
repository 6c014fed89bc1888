"""``python -m mlx_train.distill``: see mlx_train.distill.cli."""

import sys

from mlx_train.distill.cli import main

sys.exit(main())
