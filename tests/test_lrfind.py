"""The learning-rate range test: its reading of a curve, and ``hpo lr-find`` on real data."""

import numpy as np
import pytest
from click.testing import CliRunner

from hpo.cli import main
from hpo.training.lrfind import RangeTest, middle_value
from hpo.spec import FloatParam, IntParam, load_spec
from conftest import SMALL


def test_a_curve_is_read_as_steepest_minimum_and_blow_up():
    lrs = np.logspace(-6, 1, 71)  # 10 points a decade
    x = np.log10(lrs)
    losses = 0.7 - 0.2 * np.tanh(2 * (x + 3)) + np.where(x > -1, 5 * (x + 1) ** 2, 0)  # falls fastest at 1e-3
    r = RangeTest("head", lrs, losses, losses, {"embedding": 1e-3}, blew_up=True)
    assert r.steepest == pytest.approx(1e-3, rel=0.3)
    assert 1e-2 <= r.minimum <= 1e-1 and r.blowup == pytest.approx(10.0)
    low, high = r.suggested()
    assert low == pytest.approx(r.steepest / 10) and high == r.minimum
    assert r.describe().endswith(f"-> lr_head {low:.2g} to {high:.2g}")


def test_middle_values_follow_the_scale():
    assert middle_value(FloatParam(1e-4, 1e-2, log=True)) == pytest.approx(1e-3)
    assert middle_value(IntParam(1, 3)) == 2 and middle_value(0.5) == 0.5


def test_hpo_lr_find_plots_suggests_and_writes_a_spec_that_loads(tmp_path, monkeypatch, data_cache_dir):
    monkeypatch.chdir(tmp_path)
    sets = [a for o in [*SMALL, f"data.cache_dir={data_cache_dir!r}", "data.max_train=640"] for a in ("--set", o)]
    result = CliRunner().invoke(main, ["lr-find", "--study", "imdb", *sets, "--group", "head", "--steps", "40",
                                       "--lr-min", "1e-5", "--lr-max", "100", "--write-spec", "found.toml"])
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if l.startswith("head "))
    assert "steepest" in line and "blew up at" in line  # a head rate of 100 blows up within 40 steps
    assert (tmp_path / "figures" / "imdb" / "lr_find.png").read_bytes().startswith(b"\x89PNG")
    found = load_spec(str(tmp_path / "found.toml"))
    default = load_spec("imdb", [*SMALL, f"data.cache_dir={data_cache_dir!r}", "data.max_train=640"])
    head = found.space["lr_head"]
    assert isinstance(head, FloatParam) and head.log and 1e-5 <= head.low < head.high <= 100
    assert line.endswith(f"-> lr_head {head.low:.2g} to {head.high:.2g}")
    assert found.space["lr_encoder"] == default.space["lr_encoder"] and found.data == default.data


def test_an_unknown_group_is_one_line():
    result = CliRunner().invoke(main, ["lr-find", "--study", "imdb", "--group", "decoder", "--set", "data.max_train=64"])
    assert result.exit_code == 2 and result.stderr.strip().startswith("error: no layer group 'decoder'")


def test_lr_find_on_a_pretraining_study_starts_from_the_encoder_its_trials_use(tmp_path, monkeypatch, data_cache_dir):
    from test_pretrain import TINY_LM

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPO_ARTIFACTS", raising=False)
    overrides = [*SMALL, f"data.cache_dir={data_cache_dir!r}", *TINY_LM, "pretrain.epochs=1",
                 "pretrain.max_tokens=12000", "pretrain.valid_fraction=0.005"]
    sets = [a for o in overrides for a in ("--set", o)]
    storage = ["--storage", f"sqlite:///{tmp_path / 'hpo.db'}"]
    found = CliRunner().invoke(main, ["lr-find", "--study", "imdb-ulmfit", *sets, *storage,
                                      "--group", "encoder2", "--steps", "20"])
    assert found.exit_code == 0, found.output
    key = next(l for l in found.output.splitlines() if l.startswith("range test from pretrained encoder")).split()[5].rstrip(",")
    assert any(l.startswith("encoder2 ") for l in found.output.splitlines())  # a layer group of the 2-layer encoder
    # The encoder went where the study's workers look for it: `hpo pretrain` loads it, trains nothing.
    again = CliRunner().invoke(main, ["pretrain", "--study", "imdb-ulmfit", *sets, *storage])
    assert again.exit_code == 0, again.output
    assert f"pretrain: encoder {key} from the study's artifact store" in again.output
    assert "pretrain epoch" not in again.output
