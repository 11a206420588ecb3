"""hpo: find stable, accurate training settings for LSTM text classifiers, and explain divergence.

Data flows one way; each stage is a module, usable and tested without the CLI::

    spec/ (TOML + --set) ──> data.py (IMDB, split, vocab, cache) ──> model.py (encoder + head)
       │                                                                  │
       └──> spec.knobs: a trial's values ──> TrainConfig ──> train.py (one loop; DivergenceMonitor
                                                               from divergence.py decides once)
    objective.py: sample -> train -> record ──> record.py (EpochRecord per epoch, one write;
                                                           Outcome once) ──> storage/ (database,
    workers.py + callbacks.py: budget, progress, figures, checkpoint clean-up      artifacts)
    analysis/: read the study through record.py (report, importance, plots, replay, dashboard)
    cli.py: parse, delegate, turn HpoError into one line

The training loop never imports Optuna; analysis never trains.
"""
