"""Understand a finished (or running) study: importance, stability report, figures, dashboard.

Everything here reads the study through Optuna's public API, so it works on every storage, and
never trains. One module per question:

* :mod:`hpo.analysis.trials`: the study's trials as plain records (the input of every stage);
* :mod:`hpo.analysis.importance`: which hyperparameters matter, for accuracy or for divergence;
* :mod:`hpo.analysis.report`: the stability report (learning-rate bins, states, savings, reading);
* :mod:`hpo.analysis.plots`: PNG figures, Optuna's plotly views, and the per-trial figure;
* :mod:`hpo.analysis.dashboard`: optuna-dashboard on the study's storage and artifact store;
* :mod:`hpo.analysis.logs` and :mod:`hpo.analysis.diagnose`: a training log from anywhere (fastai,
  Keras, Lightning, TensorBoard, any table, or a trial) judged by the same divergence rules.
"""
