"""hpo: find stable, accurate training settings for LSTM text classifiers, and explain divergence.

Data flows one way; each stage is a module, usable and tested without the CLI::

    spec/ (TOML + --set, validated) ─> data.py (IMDB, split, vocab, cache; batches by length)
      ─> pretrain.py (the encoder as a language model, once per configuration, in the artifact store)
      ─> model.py (Encoder + classifier head, layer groups by name)
      ─> train.py (one loop: per-group rates, clipping, SGDR, unfreezing; divergence.py's monitor decides)
      ─> objective.py (sample -> train -> record) ─> record.py (EpochRecord per epoch, one write;
         Outcome once) ─> storage/ (URLs, locks, resilient database, artifacts)
    workers.py + callbacks.py: budget, progress, figures, checkpoint clean-up around each trial
    analysis/: reads studies through record.py: report, importance, plots, replay, dashboard
    cli.py: parses, delegates, and turns an HpoError into one line

The training loop never imports Optuna; analysis never trains.
"""
