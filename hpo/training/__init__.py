"""Training: the model, one readable loop, and what is built on the same step. No Optuna here.

* :mod:`hpo.training.models`: the LSTM encoder and classifier, parameters in named layer groups;
* :mod:`hpo.training.config`: every knob of one run (:class:`~hpo.training.config.TrainConfig`),
  and the configuration a trial's values give;
* :mod:`hpo.training.step`: the forward loss and the update (norms, clipping, optimizer step),
  shared by the loop, the range test, pretraining and the speed benchmark;
* :mod:`hpo.training.loop`: per-group rates, SGDR, unfreezing, evaluation, the divergence monitor;
* :mod:`hpo.training.schedule`, :mod:`hpo.training.device`: rate schedules; device, threads, precision;
* :mod:`hpo.training.telemetry`: step-level samples of losses, norms, rates and update ratios;
* :mod:`hpo.training.checkpoints`: a trial's checkpoints, so a re-run resumes;
* :mod:`hpo.training.pretrain`, :mod:`hpo.training.lrfind`, :mod:`hpo.training.calibrate`:
  language-model pretraining, the learning-rate range test, this machine's fastest setting;
* :mod:`hpo.training.lightning`: :class:`~hpo.training.lightning.DivergenceCallback`, the divergence
  rules in a PyTorch Lightning ``Trainer`` (optional: ``pip install 'hpo[lightning]'``).
"""
