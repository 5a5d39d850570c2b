"""``python -m dsnot_kernels`` = ``dsnot-prune``."""
import sys

from dsnot_kernels.cli import main

sys.exit(main())
