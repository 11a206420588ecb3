"""The ``hpo`` command line: parse, delegate to the library, turn user errors into one line.

Every command is a thin shell over functions that are usable and tested without it. A
:class:`~hpo.errors.HpoError` anywhere becomes ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from hpo.errors import HpoError
from hpo.storage import mask_url, resolve_storage_url


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HpoError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="hpo")
def main() -> None:
    """Find stable, accurate training settings for recurrent text classifiers."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines replace Optuna's


def _echo(message: str) -> None:
    click.echo(message)


@main.command()
@click.option("--study", "study", required=True, help="Spec name (studies/NAME.toml) or path to a .toml file.")
@click.option("--trials", type=click.IntRange(min=1), required=True, help="Finished trials the study should have in total.")
@click.option("--storage", default=None, help="Database URL (default: $HPO_STORAGE, else sqlite:///hpo.db).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, help="Stop starting trials after this many seconds.")
@click.option("--seed", type=int, default=None, help="Sampler seed (overrides sampler.seed).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec key, e.g. --set train.max_epochs=2 (repeatable).")
def optimize(study: str, trials: int, storage: str | None, timeout: float | None, seed: int | None, overrides: tuple[str, ...]) -> None:
    """Run trials until the study has TRIALS finished (complete or pruned) trials."""
    from hpo.spec import load_spec
    from hpo.workers import run_worker

    spec = load_spec(study, overrides)
    url, origin = resolve_storage_url(storage)
    _echo(f"storage: {mask_url(url)} ({origin})")
    resume = f"hpo optimize --study {study} --trials {trials}" + "".join(f" --set {o}" for o in overrides)
    try:
        outcome = run_worker(spec, url, trials, timeout=timeout, seed=seed, log=_echo)
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted: the running trial was stopped and marked FAIL (failed trials do not count "
            f"toward the budget). Finished trials are kept; resume with: {resume}",
            err=True,
        )
        sys.exit(130)
    _echo(_summary(outcome, url))


def _summary(outcome: Any, url: str) -> str:
    t = outcome.tally
    lines = ["", f"study {outcome.study_name!r}: {t.finished} finished trials ({outcome.ran} run now)"]
    lines.append(
        f"  complete {t.complete}, pruned-diverged {t.diverged}, pruned-other {t.pruned_other}, failed {t.failed}"
    )
    if t.best is not None:
        test = t.best.user_attrs.get("test_accuracy")
        test_txt = f", test accuracy {test:.4f}" if test is not None else ""
        lines.append(f"  best: trial {t.best.number}, val accuracy {t.best.value:.4f}{test_txt}, epoch {t.best.user_attrs.get('best_epoch')}")
        for key, value in sorted(t.best.params.items()):
            lines.append(f"    {key} = {value:.4g}" if isinstance(value, float) else f"    {key} = {value}")
    else:
        lines.append("  no trial completed yet")
    lines.append(f"  storage: {mask_url(url)}")
    lines.append(f"  browse it: optuna-dashboard {mask_url(url)}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    main()
