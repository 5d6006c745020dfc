"""From a request to a plan: ``request`` (what is asked), ``grid`` (candidate keep-counts),
``problem`` (the integer program's data), ``scoring`` (the tie-breaks), ``search`` (solve and
polish), ``pipeline`` (the steps and :func:`plan`), ``baselines`` (uniform, ERK, global, LAMP)
and ``planfile`` (:class:`Plan` and its JSON format).

This module holds the names the command line needs without importing numpy.
"""

#: how plans with equal bounds are ordered (``scoring.Scorer``); ``magnitude`` and ``lamp`` need
#: the model's trained weights; ``auto`` (the default) is one of them, with a bound floor, chosen
#: by what the request holds (``request.resolve_auto``)
TIE_BREAKS = ("auto", "robust", "robust-analytic", "prior:uniform", "prior:erk", "magnitude", "lamp", "none")
#: what ``auto`` becomes: (tie-break, bound floor) with the model's trained weights, and without
#: them; chosen by the evidence of docs/experiments.md ("The default, chosen by evidence")
AUTO_WITH_WEIGHTS = ("lamp", "2")
AUTO_WITHOUT_WEIGHTS = ("prior:erk", "2")
#: how the plan is searched on integer keep-counts after the grid (``integer.py``): ``auto``
#: enumerates every allocation when there are few, else runs a local search; ``local`` always
#: searches locally; ``off`` keeps the grid plan
INTEGER_SEARCHES = ("auto", "local", "off")
#: what the plan optimizes: the bound (``pipeline``), or the summed measured loss increase of a
#: sensitivity table (``secondary``); either may keep the bound within ``--bound-floor`` of its best
OBJECTIVES = ("bound", "sensitivity")
#: the baseline allocations of ``baselines.py``
BASELINES = ("uniform", "uniform-plus", "erk", "global", "lamp")
#: every strategy a plan can come from
STRATEGIES = ("lr-bound",) + BASELINES
#: baselines that rank trained weights
NEEDS_WEIGHTS = ("global", "lamp")
