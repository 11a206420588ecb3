"""The search: Optuna studies of the spec's knobs, trials that train, and the workers that run them.

* :mod:`hpo.search.study`: the study as the spec describes it (sampler, pruner), created once and
  joined by every worker with the same spec;
* :mod:`hpo.search.objective`: sample -> train -> record (the only place Optuna meets training);
* :mod:`hpo.search.callbacks`: what a worker does around its trials (progress, figures, notes,
  checkpoint clean-up, the budget);
* :mod:`hpo.search.workers`: one worker, or several processes, until the study has its budget.
"""
