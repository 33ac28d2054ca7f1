"""``python -m amgp_fx.cli``: the ``amgp-compress`` command line."""
import sys

from amgp_fx.cli.entry import main

sys.exit(main())
