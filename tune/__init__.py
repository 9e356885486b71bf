"""selmatch-tune: the distributed search of SelMatch's β and α (Ray Tune, Optuna, MLflow).

By stage: :mod:`selmatch_tune.settings` (what a search is), :mod:`selmatch_tune.flow` (the
search as it runs), :mod:`selmatch_tune.cluster` (where it runs), :mod:`selmatch_tune.results`
(what it leaves); ``tune/search_alpha_beta.py`` is the command.
"""

from selmatch._moved import install as _install_moved

_install_moved()  # the module paths before the layout by stage still import
