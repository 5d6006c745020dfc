"""The mathematics: architectures (``arch``), rank distributions of pruned matrices (``rank``),
Theorem 1's expected bound (``bound``) and the on-disk distribution cache (``cache``).

This module holds the names other layers (the command line's choices) need without importing
numpy; the modules define the rest.
"""

#: rank-distribution estimators; each is a function in ``rank.py`` dispatched by name
RANK_MODELS = ("sampled", "svd", "analytic", "exact")
