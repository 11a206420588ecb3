"""The study's database: URLs and secrets, locks, resilient storage, and trial writes that stay exact
when several workers race or a connection breaks mid-commit (:mod:`hpo.storage.database.trial_writes`)."""
