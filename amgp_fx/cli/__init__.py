"""``amgp-compress``: analyse, prune, train, export and benchmark a recommendation model from the shell.

Layout (each module imports only those above it in this list; torch is imported only once a
command runs, so bad arguments fail in a fraction of a second):

- :mod:`~amgp_fx.cli.values`: option value parsers and constants (pure).
- :mod:`~amgp_fx.cli.parser`: the argparse parser of every subcommand.
- :mod:`~amgp_fx.cli.output`: staged output folders, progress lines, tables.
- :mod:`~amgp_fx.cli.common`: model options and loading, pruning requests, saving, export.
- :mod:`~amgp_fx.cli.data`: the data ``train`` and ``run`` train on.
- one module per subcommand, each with ``command(args) -> exit code``: :mod:`~amgp_fx.cli.analyze`,
  :mod:`~amgp_fx.cli.prune`, :mod:`~amgp_fx.cli.export`, :mod:`~amgp_fx.cli.bench`,
  :mod:`~amgp_fx.cli.train`, and :mod:`~amgp_fx.cli.run` (which uses train's and bench's steps).
- :mod:`~amgp_fx.cli.entry`: ``main``, which parses, runs the subcommand and maps errors to exit codes.

``amgp_fx.cli:main`` is the console script; ``python -m amgp_fx.cli`` runs it too.

Example:
    >>> parse_ratio("0.25"), parse_batch_sizes("1, 64,512"), parse_group_ratio("g1=0.5")
    (0.25, (1, 64, 512), ('g1', 0.5))
"""
from amgp_fx.cli.entry import main
from amgp_fx.cli.parser import build_parser
from amgp_fx.cli.values import parse_batch_sizes, parse_factory_kwargs, parse_group_ratio, parse_ratio

__all__ = ["build_parser", "main", "parse_batch_sizes", "parse_factory_kwargs", "parse_group_ratio", "parse_ratio"]
