"""The ``hpo`` command line: parse, delegate to the library, turn user errors into one line.

Every command is a thin shell over functions that are usable and tested without it. A
:class:`~hpo.errors.HpoError` anywhere becomes ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import signal
import sys

# Loading the command line imports torch, Optuna and SQLAlchemy: seconds on a busy machine. A Ctrl-C
# in that time would end in Python's traceback of the import; it ends as one after start-up does.
# Ctrl-C is held (blocked) until the imports are done: raised inside them, its KeyboardInterrupt
# could land in an import lock's weakref callback, where Python prints "Exception ignored" and drops
# it, and the command ran on with torch's start-up cut short (benchmarks/chaos.py on SQLite: the
# next Ctrl-C, in loss.backward(), ended in SIGABRT). The kernel keeps it pending meanwhile; setting
# the mask back raises it here. A --jobs worker comes in with it blocked already and keeps it so.
_BEFORE = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if hasattr(signal, "pthread_sigmask") else None
try:
    import dataclasses
    import shlex
    from pathlib import Path
    from typing import Any

    import click
    import optuna

    from hpo.analysis import dashboard as dashboard_app
    from hpo.analysis import replay as replays
    from hpo.analysis import report as reports
    from hpo.analysis.diagnose import columns_from_pairs, diagnose, rules_from_pairs
    from hpo.analysis.importance import format_importance, param_importances
    from hpo.analysis.logs import parse_log, read_log
    from hpo.analysis.plots import lr_find_figure, write_study_figures
    from hpo.analysis.steps import trial_step_figures
    from hpo.analysis.trials import load_study_data, trial_log
    from hpo.data import load_dataset
    from hpo.errors import HpoError
    from hpo.export import export_model, format_predictions, load_model, progress_printer, read_texts
    from hpo.search.study import find_study, open_study
    from hpo.search import run
    from hpo.search.workers import quiet_optuna_logging
    from hpo.spec import builtin_studies, load_spec
    from hpo.storage.artifacts.cleanup import clean_study
    from hpo.storage.artifacts.stores import artifact_store, describe_location, store_for
    from hpo.storage.artifacts.usage import usage, usage_summary
    from hpo.storage.database.proxy_auth import server_tls
    from hpo.storage.database.resilient import open_storage
    from hpo.storage.database.studies import load_existing
    from hpo.storage.database.urls import display_url, mask_url, resolve_storage_url
    from hpo.storage.proxy import server as proxy_server
    from hpo.training import lrfind
    from hpo.training.device import configure_threads
    from hpo.training.pretrain import ensure_encoder

    if _BEFORE is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, _BEFORE)  # raises a Ctrl-C held meanwhile
except KeyboardInterrupt:
    print("interrupted while hpo was starting: nothing was done", file=sys.stderr)
    sys.exit(130)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HpoError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:  # one the command does not explain itself (optimize does, once trials run)
            click.echo("\ninterrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="hpo")
def main() -> None:
    """Find stable, accurate training settings for text classifiers."""
    quiet_optuna_logging()


def _echo(message: str) -> None:
    click.echo(message)


class _ListsStudies(click.Command):
    """Ends its help with the built-in studies, read when the help is shown (not at import)."""
    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Built-in studies (a ./studies/NAME.toml of the same name wins)"):
            formatter.write_dl(sorted(builtin_studies().items()))


def _jobs(value: str) -> str | int:
    if value == "auto":
        return value
    try:
        jobs = int(value)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a whole number >= 1")
    return jobs


@main.command(cls=_ListsStudies)
@click.option("--study", "study", required=True, help="A built-in study (listed below), ./studies/NAME.toml, or a path to a .toml file.")
@click.option("--trials", type=click.IntRange(min=1), required=True, help="Finished trials the study should have in total.")
@click.option("--storage", default=None, help="Database URL (default: $HPO_STORAGE, else sqlite:///hpo.db).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, help="Stop starting trials after this many seconds.")
@click.option("--seed", type=int, default=None, help="Sampler seed (overrides sampler.seed).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec key, e.g. --set train.max_epochs=2 (repeatable).")
@click.option("--jobs", default="auto", show_default=True, metavar="N|auto",
              help="Worker processes on this machine, the cores split between them. auto: what this machine's "
                   "calibration measured fastest (else one per core) on a CPU, as memory allows (~1.5 GiB each); "
                   "1 on a GPU.")
@click.option("--grace-period", type=click.IntRange(min=2), default=60, show_default=True, envvar="HPO_GRACE_PERIOD",
              help="Seconds without a heartbeat after which a worker's trial is failed and re-run elsewhere ($HPO_GRACE_PERIOD).")
@click.option("--tensorboard", "tensorboard", default=None, metavar="DIR",
              help="Also write each trial's step telemetry as TensorBoard scalars under DIR/STUDY/trial-N "
                   "(needs pip install 'hpo[tensorboard]').")
def optimize(study: str, trials: int, storage: str | None, timeout: float | None, seed: int | None, overrides: tuple[str, ...],
             jobs: str, grace_period: int, tensorboard: str | None) -> None:
    """Run trials until the study has TRIALS finished (complete or pruned) trials.

    Several workers (--jobs, or this command on several machines with one --storage) share the
    one budget. Running the same command again continues the study.
    """
    url, origin = resolve_storage_url(storage)  # for the resume command; optimize() resolves it the same way
    try:
        outcome = run.optimize(study, trials, storage=storage, overrides=overrides, jobs=_jobs(jobs), seed=seed,
                               timeout=timeout, log=_echo, grace_period=grace_period, tensorboard=tensorboard)
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted: the running trial was stopped, marked FAIL (failed trials do not count toward "
            f"the budget) and queued to run again from its last checkpoint. Finished trials are kept; "
            f"resume with: {resume_command(study, trials, overrides, url, origin, jobs)}",
            err=True,
        )
        sys.exit(130)
    _echo(_summary(outcome, url, origin))


def resume_command(study: str, trials: int, overrides: tuple[str, ...], url: str, origin: str, jobs: str) -> str:
    """The command that continues the same study in the same storage, password masked."""
    parts = ["hpo", "optimize", "--study", study, "--trials", str(trials)]
    note = ""
    if origin == "--storage" or origin == "default":
        shown = display_url(url)
        parts += ["--storage", shown]
        if "***" in shown:
            note = " (put the password back for ***, or keep it out of the command line with $HPO_STORAGE_PASSWORD_FILE)"
    else:
        note = f" (with {origin} set as now)"
    if jobs != "auto":
        parts += ["--jobs", jobs]
    for o in overrides:
        parts += ["--set", o]
    return shlex.join(parts) + note


@main.command(cls=_ListsStudies)
@click.option("--study", "study", required=True, help="A built-in study (listed below), ./studies/NAME.toml, or a path to a .toml file.")
@click.option("--storage", default=None, help="Database URL (default: $HPO_STORAGE, else sqlite:///hpo.db).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec key, e.g. --set pretrain.epochs=2 (repeatable).")
def pretrain(study: str, storage: str | None, overrides: tuple[str, ...]) -> None:
    """Pretrain the study's encoder as a language model (hpo optimize does it first when it is missing).

    The encoder is stored in the study's artifact store, keyed by the data, the encoder's
    configuration and the [pretrain] settings; run again, it is loaded, not retrained.
    """
    spec = load_spec(study, overrides)
    if not spec.pretrain.epochs:
        raise HpoError(f"study {spec.name!r} does not pretrain (pretrain.epochs = 0): --set pretrain.epochs=N")
    url, origin = resolve_storage_url(storage)
    _echo(f"storage: {display_url(url)} ({origin})")
    find_study(spec, open_storage(url))  # a study of another spec is refused before the data is read
    configure_threads(spec.train.threads)
    data = load_dataset(spec.data, _echo)  # bad input fails here, before the study exists
    opened = open_study(spec, open_storage(url))
    encoder = ensure_encoder(spec, artifact_store(opened), url, _echo, data=data)
    assert encoder is not None
    ppl = ", ".join(f"{x:.1f}" for x in encoder.perplexities)
    _echo(f"encoder {encoder.key}: held-out perplexity by epoch {ppl}; {encoder.seconds / 60:.1f} min, "
          f"{encoder.tokens_per_second / 1000:.1f}k tokens/s ({encoder.precision})")


@main.command("lr-find", cls=_ListsStudies)
@click.option("--study", "study", required=True, help="A built-in study (listed below), ./studies/NAME.toml, or a path to a .toml file.")
@click.option("--group", "groups", multiple=True, metavar="G", help="Layer group to test (repeatable; default: every group).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec key, e.g. --set data.max_train=4000 (repeatable).")
@click.option("--steps", type=click.IntRange(min=20), default=200, show_default=True, help="Steps per group (the rate rises over them).")
@click.option("--lr-min", type=float, default=1e-6, show_default=True)
@click.option("--lr-max", type=float, default=10.0, show_default=True)
@click.option("--out", "out_dir", default=None, help="Folder for lr_find.png (default: figures/STUDY).")
@click.option("--write-spec", "write_spec", default=None, metavar="PATH",
              help="Write the spec with each tested group's rate searched over its suggested range.")
@click.option("--storage", default=None,
              help="Database URL whose artifact store holds (or gets) a pretraining study's encoder "
                   "(default: $HPO_STORAGE, else sqlite:///hpo.db); unused when the study does not pretrain.")
def lr_find(study: str, groups: tuple[str, ...], overrides: tuple[str, ...], steps: int, lr_min: float, lr_max: float,
            out_dir: str | None, write_spec: str | None, storage: str | None) -> None:
    """The learning-rate range test per layer group (Smith 2015, fastai's lr_find).

    Each group's rate rises exponentially over --steps steps while the others stay at the middle
    of their range; the smoothed loss is plotted against the rate, and a search range is suggested
    per group: from a tenth of the steepest descent to the rate at the lowest loss. A study that
    pretrains starts the test from its pretrained encoder, as its trials do (trained first and
    stored in the study's artifact store when missing).
    """

    spec = load_spec(study, overrides)
    lrfind.check_arguments(spec, groups, lr_min, lr_max)  # before the data is read
    configure_threads(spec.train.threads)
    data = load_dataset(spec.data, _echo)
    chosen = lrfind.groups_to_test(spec, data, groups)
    encoder = _study_encoder(spec, storage, data) if spec.pretrain.epochs else None
    results = []
    for group in chosen:
        result = lrfind.range_test(spec, data, group, steps, lr_min, lr_max, encoder=encoder)
        _echo(result.describe())
        results.append(result)
    out = Path(out_dir or f"figures/{spec.name}")
    out.mkdir(parents=True, exist_ok=True)
    title = f"{spec.name}: learning-rate range test, {steps} steps per group, {len(data.train):,} reviews"
    lr_find_figure(results, title).savefig(out / "lr_find.png")
    _echo(str(out / "lr_find.png"))
    if write_spec:
        header = f"{spec.name} with lr ranges from: hpo lr-find --study {study} " + " ".join(f"--set {o}" for o in overrides)
        _echo(str(lrfind.write_spec(spec, results, write_spec, header)))


def _study_encoder(spec: Any, storage: str | None, data: Any) -> Any:
    """The study's pretrained encoder, from (or trained into) the store its trials use."""
    url, origin = resolve_storage_url(storage)
    _echo(f"storage: {display_url(url)} ({origin}), for the pretrained encoder")
    encoder = ensure_encoder(spec, store_for(spec.name, open_storage(url)), url, _echo, data=data)
    _echo(f"range test from pretrained encoder {encoder.key}, as the study's trials start")
    return encoder


@main.command()
def studies() -> None:
    """List the built-in study specs (hpo optimize --study NAME)."""

    for name, description in builtin_studies().items():
        local = Path("studies") / f"{name}.toml"
        where = f"  (./{local} wins here)" if local.is_file() else ""
        _echo(f"{name:<14} {description}{where}")


def _summary(outcome: run.OptimizeOutcome, url: str, origin: str) -> str:
    lines = ["", f"study {outcome.study!r}: {outcome.finished} finished trials ({outcome.ran} run now)"]
    lines.append(
        f"  complete {outcome.complete}, pruned-diverged {outcome.diverged}, pruned-other {outcome.pruned}, "
        f"failed {outcome.failed}"
    )
    if outcome.best_trial is not None:
        test = outcome.test_accuracy
        test_txt = f", test accuracy {test:.4f}" if test is not None else ""
        lines.append(f"  best: trial {outcome.best_trial}, val accuracy {outcome.accuracy:.4f}{test_txt}, "
                     f"epoch {outcome.best_epoch}")
        for key, value in sorted(outcome.params.items()):
            lines.append(f"    {key} = {value:.4g}" if isinstance(value, float) else f"    {key} = {value}")
    else:
        lines.append("  no trial completed yet")
    lines.append(f"  storage: {outcome.storage}")
    if outcome.artifacts:
        lines.append(f"  artifacts: {outcome.artifacts}")
    # Only a storage given on the command line needs repeating; a password never is.
    where = f" --storage {mask_url(url)}" if origin == "--storage" else ""
    lines.append(f"  understand it: hpo report --study {outcome.study}{where}")
    lines.append(f"  browse it:     hpo dashboard --study {outcome.study}{where}")
    return "\n".join(lines)


_STUDY = click.option("--study", "study", required=True, help="Name of a study in the storage.")
_STORAGE = click.option("--storage", default=None, help="Database URL (default: $HPO_STORAGE, else sqlite:///hpo.db).")


def _read_storage(storage: str | None) -> Any:
    """The storage of a read-only command: opened without creating anything."""
    url, _ = resolve_storage_url(storage)
    return open_storage(url, create=False)


def _study_data(study: str, storage: str | None) -> Any:

    return load_study_data(study, _read_storage(storage))


@main.command()
@_STUDY
@_STORAGE
@click.option("--target", type=click.Choice(["accuracy", "divergence"]), default="accuracy", show_default=True,
              help="Rank parameters by their effect on best validation accuracy, or on whether a trial diverged.")
@click.option("--evaluator", type=click.Choice(["ped-anova", "fanova", "mdi", "permutation"]), default=None,
              help="Default: ped-anova for accuracy, permutation (random forest) for divergence. "
                   "fanova is Optuna's default and takes ~30 s at 1,000 trials.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random forests.")
def importance(study: str, storage: str | None, target: str, evaluator: str | None, seed: int) -> None:
    """Which hyperparameters matter, on the log scale they were sampled on, pruned trials included."""
    _echo(format_importance(param_importances(_study_data(study, storage), target, evaluator, seed)))


@main.command()
@_STUDY
@_STORAGE
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json"]), default="table", show_default=True,
              help="csv holds the per-bin rows; json everything.")
def report(study: str, storage: str | None, fmt: str) -> None:
    """Stability report: divergence and accuracy by learning rate, states, best trial, epochs saved."""

    opened = _read_storage(storage)
    built = reports.build_report(load_study_data(study, opened))
    built = dataclasses.replace(built, artifacts=usage_summary(optuna.load_study(study_name=study, storage=opened)))
    _echo(reports.render(built, fmt))


@main.command()
@_STUDY
@_STORAGE
@click.option("--trial", "trial_number", type=click.IntRange(min=0), default=None, help="This trial (default: the study's best).")
@click.option("--top", type=click.IntRange(min=1), default=None,
              help="An ensemble of the top K trials, averaging their probabilities (at most artifacts.keep_best).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The model file to write, e.g. model.pt.")
def export(study: str, storage: str | None, trial_number: int | None, top: int | None, out: str) -> None:
    """Write the model a study found to one self-contained file, for hpo predict or hpo.load_model.

    It holds the kept best-epoch weights (artifacts.keep_best), the vocabulary, the tokenizer
    settings, the class names, the spec and the trial's parameters: no database is needed to use it.
    """
    opened = load_existing(study, _read_storage(storage))
    _echo(export_model(opened, out, trial_number, top).describe())


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="A file from hpo export.")
@click.argument("texts", nargs=-1)
@click.option("--file", "text_file", type=click.Path(dir_okay=False), default=None,
              help="A CSV file with a header row (.tsv: tab-separated), one text per row.")
@click.option("--text-column", default="text", show_default=True, help="The column of --file that holds the texts.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Texts per batch (default: as evaluation).")
@click.option("--device", default=None, help="cpu or cuda[:N] (default: CUDA when present).")
def predict(model_path: str, texts: tuple[str, ...], text_file: str | None, text_column: str, fmt: str,
            batch_size: int | None, device: str | None) -> None:
    """Label and probability of each TEXT (or each row of --file) by a model from hpo export."""
    items = list(texts) + (read_texts(text_file, text_column) if text_file else [])
    if not items:
        raise HpoError("nothing to predict: give texts as arguments or --file F.csv [--text-column C]")
    model = load_model(model_path, device)
    progress = progress_printer(lambda m: click.echo(m, err=True)) if len(items) > 10 * (batch_size or 128) else None
    _echo(format_predictions(items, model.predict(items, batch_size, progress), model.classes, fmt))


@main.command()
@_STUDY
@_STORAGE
def clean(study: str, storage: str | None) -> None:
    """Delete what the study's artifact store keeps for nothing: checkpoints of trials that cannot
    resume any more, and (in a database store) artifacts no study refers to. Run it when no worker
    is starting: a dead worker's trial keeps its checkpoints only once its re-run is queued."""
    opened = load_existing(study, _read_storage(storage))
    store = artifact_store(opened)
    freed = clean_study(opened, store)
    _echo(f"study {study!r}, artifacts in {store!r}")
    _echo(f"removed {freed.describe()}")
    _echo(f"left: {usage(opened, store).describe()}")


@main.command()
@_STUDY
@_STORAGE
@click.option("--out", "out_dir", default=None, help="Folder for the figures (default: figures/STUDY).")
@click.option("--trial", "trial_number", type=int, default=None,
              help="Only this trial's step-level figure (loss, gradient norms, update ratios, rates per step).")
def plot(study: str, storage: str | None, out_dir: str | None, trial_number: int | None) -> None:
    """PNG figures (losses, gradient norms, learning rates) and Optuna's plotly views as HTML.

    With --trial N: that trial's step-level figure, as interactive HTML and as PNG.
    """

    opened = _read_storage(storage)
    if trial_number is not None:
        for path in trial_step_figures(study, opened, trial_number, out_dir or f"figures/{study}"):
            _echo(str(path))
        return
    data = load_study_data(study, opened)
    paths = write_study_figures(data, optuna.load_study(study_name=study, storage=opened), out_dir or f"figures/{study}")
    for path in paths:
        _echo(str(path))


@main.command()
@_STUDY
@_STORAGE
@click.option("--pruner", "pruners", multiple=True, metavar="SPEC",
              help="A policy to replay (repeatable): median[:n_startup_trials=5,warmup_epochs=1], "
                   "percentile:percentile=25, successive_halving:reduction_factor=2, hyperband, none. "
                   "Default: the study's own and a set from gentle to aggressive.")
@click.option("--divergence", "divergence", multiple=True, metavar="KEY=VALUE",
              help="Override a divergence rule for the replay, e.g. --divergence threshold=1.0 (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def replay(study: str, storage: str | None, pruners: tuple[str, ...], divergence: tuple[str, ...], fmt: str) -> None:
    """Replay pruners offline over a finished study's stored curves: what would each have cut?"""
    header, results = replays.replay_study(_study_data(study, storage), pruners, divergence)
    _echo(replays.render(results, fmt, header))


@main.command()
@_STUDY
@_STORAGE
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind; 0.0.0.0 exposes the dashboard (it has no login).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
def dashboard(study: str, storage: str | None, host: str, port: int) -> None:
    """Start optuna-dashboard on the study's storage and artifact store (trial figures)."""
    url, origin = resolve_storage_url(storage)
    plan = dashboard_app.plan_dashboard(study, url, host, port)

    _echo(f"storage: {display_url(url)} ({origin}); artifacts: {describe_location(plan.artifact_location)}")
    if plan.note:
        _echo(f"note: {plan.note}")
    _echo(f"dashboard: {plan.url}  (Ctrl-C stops it)")
    sys.stdout.flush()
    try:
        dashboard_app.serve(plan)
    except KeyboardInterrupt:
        pass


@main.command("storage-proxy")
@_STORAGE
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; another than loopback needs the token ($HPO_PROXY_TOKEN[_FILE]) or --insecure.")
@click.option("--port", type=click.IntRange(1, 65535), default=13000, show_default=True)
@click.option("--artifact-port", type=click.IntRange(1, 65535), default=None,
              help="Port of the study database's artifact store over HTTP  [default: --port + 1, where workers look]")
@click.option("--grace-period", type=click.IntRange(min=2), default=60, show_default=True, envvar="HPO_GRACE_PERIOD",
              help="Seconds without a heartbeat after which a proxied worker's trial is failed and re-run ($HPO_GRACE_PERIOD).")
@click.option("--tls-cert", default=None, metavar="PEM", help="Serve both ports over TLS with this certificate (chain); with --tls-key.")
@click.option("--tls-key", default=None, metavar="PEM", help="The certificate's private key.")
@click.option("--insecure", is_flag=True, help="Serve a non-loopback --host without a token (a network you trust).")
def storage_proxy(storage: str | None, host: str, port: int, artifact_port: int | None, grace_period: int,
                  tls_cert: str | None, tls_key: str | None, insecure: bool) -> None:
    """Serve the study database to workers through Optuna's gRPC proxy (workers: --storage grpc://HOST:PORT),
    with heartbeats and the database's artifact store, to clients presenting $HPO_PROXY_TOKEN (or the
    file $HPO_PROXY_TOKEN_FILE)."""
    url, _ = resolve_storage_url(storage)
    proxy_server.serve(url, host, port, log=lambda m: (_echo(m), sys.stdout.flush()), artifact_port=artifact_port,
                       grace_period=grace_period, tls=server_tls(tls_cert, tls_key), insecure=insecure)


@main.command("diagnose")
@click.argument("log_file", required=False, metavar="FILE|-")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--out", "out_dir", default=None, metavar="DIR", help="Folder for a figure of the curves with the verdict marked.")
@click.option("--rules", "rules", multiple=True, metavar="KEY=VALUE",
              help="Set a divergence rule, e.g. --rules threshold=1.0 (repeatable; keys: threshold, train_rise, "
                   "warmup_epochs, confirm_epochs, no_progress_epochs, chance_margin, grad_norm_limit).")
@click.option("--columns", "columns", multiple=True, metavar="ROLE=NAME",
              help="Name a column yourself, e.g. --columns val_loss=my_loss (roles: train_loss, val_loss, accuracy).")
@click.option("--classes", "num_classes", type=click.IntRange(min=2), default=None, metavar="K",
              help="How many classes the model chooses among: chance is ln K (default: a study's own, else 2).")
@click.option("--study", default=None, help="Judge a trial of this hpo study instead of a file (with --trial).")
@click.option("--trial", "trial_number", type=int, default=None, help="The trial's number (with --study).")
@_STORAGE
def diagnose_command(log_file: str | None, fmt: str, out_dir: str | None, rules: tuple[str, ...],
                     columns: tuple[str, ...], num_classes: int | None, study: str | None, trial_number: int | None,
                     storage: str | None) -> None:
    """Judge a training run from its log: diverged, overfitting, stable, or cannot judge, and what to try.

    FILE is a fastai or any other epoch table (whitespace or CSV), Keras console output or a Keras
    CSVLogger file, a Lightning metrics.csv (or its folder), TensorBoard event files (or their
    folder); - reads stdin. Exit 0 for any verdict, 2 when the input cannot be read.
    """
    stored = None  # a study's own divergence rules, which --rules then changes
    if study is not None or trial_number is not None:
        if study is None or trial_number is None or log_file is not None:
            raise HpoError("--study and --trial go together, without a FILE: hpo diagnose --study S --trial N")
        log, stored = trial_log(study, _read_storage(storage), trial_number)
    elif log_file == "-":
        log = parse_log(sys.stdin.read())
    elif log_file:
        log = read_log(log_file)
    else:
        raise HpoError("give a log: hpo diagnose FILE, - for stdin, or --study S --trial N")
    result = diagnose(log, rules_from_pairs(rules, stored), columns_from_pairs(columns), num_classes)
    _echo(result.to_json() if fmt == "json" else result.render())
    if out_dir:
        path = result.figure(out_dir)
        if fmt == "text":
            _echo(f"figure: {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
