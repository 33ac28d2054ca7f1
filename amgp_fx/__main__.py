"""``python -m amgp_fx``: the ``amgp-compress`` command line."""
import sys

from amgp_fx.cli import main

sys.exit(main())
