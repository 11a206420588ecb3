"""Training: the loop, its step, schedules, telemetry, checkpoints, pretraining, lr-find, calibration.

:mod:`hpo.training.lightning` holds :class:`~hpo.training.lightning.DivergenceCallback`, the
divergence rules in a PyTorch Lightning ``Trainer`` (optional: ``pip install 'hpo[lightning]'``).
"""
