"""Experiments: ``compare`` (train, prune by each strategy, fine-tune, measure), ``training``
(the MLP and SGD), ``report`` (summaries, tables, plots, output files), ``data`` (digits,
MNIST, Fashion-MNIST, CIFAR-10 from local files) and ``regions`` (exact linear-region counts).

This module holds the names the command line needs without importing numpy.
"""

#: data sets ``data.load_dataset`` reads (digits ships with scikit-learn)
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
DEFAULT_STRATEGIES = ("lr-bound", "uniform", "erk", "global", "lamp")
DEFAULT_DENSITIES = (0.1, 0.05, 0.03, 0.02, 0.01, 0.007)
#: ``--densities low``: down to where uniform pruning collapses on digits (the paper's range)
LOW_DENSITIES = (0.05, 0.02, 0.01, 0.005, 0.003, 0.002, 0.001)
