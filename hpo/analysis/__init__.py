"""Understand a finished (or running) study: importance, stability report, figures, dashboard. Never trains.

Everything here reads studies through Optuna's public API and the trial record
(:mod:`hpo.record`), so it works on every storage; the workers' callbacks call it to put figures
and notes on the dashboard while a study runs. One module per question:

* :mod:`hpo.analysis.trials`: a study's trials as records (the input of every stage);
* :mod:`hpo.analysis.importance`: which hyperparameters matter, for accuracy or for divergence;
* :mod:`hpo.analysis.report`: the stability report (learning-rate bins, states, savings, reading);
* :mod:`hpo.analysis.replay`: pruners replayed offline over a study's stored curves;
* :mod:`hpo.analysis.plots`, :mod:`hpo.analysis.steps`: PNG and HTML figures of a study and of a trial;
* :mod:`hpo.analysis.notes`, :mod:`hpo.analysis.dashboard`: optuna-dashboard notes, and serving it;
* :mod:`hpo.analysis.tensorboard`: a trial's step telemetry as TensorBoard scalars;
* :mod:`hpo.analysis.logs`, :mod:`hpo.analysis.diagnose`: a training log from anywhere (fastai,
  Keras, Lightning, TensorBoard, any table, or a trial) judged by the same divergence rules.
"""
