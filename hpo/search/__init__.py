"""The search: objective, sampler and pruner, workers and the global budget, callbacks for side
effects; and :mod:`hpo.search.lifeline`, which ends a worker process with its parent."""
