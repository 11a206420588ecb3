import pytest

from hpo.errors import HpoError
from hpo.spec import FloatParam, IntParam, apply_overrides, load_spec, spec_from_dict


def test_default_spec_loads_with_a_distribution_per_knob():
    spec = load_spec("imdb")
    assert spec.name == "imdb"
    assert spec.space["lr_head"] == FloatParam(3e-4, 3e-1, log=True)
    assert isinstance(spec.space["cycle_len"], IntParam)
    assert spec.divergence.threshold == 0.5


def test_overrides_are_toml_typed_and_dotted():
    spec = load_spec(
        "imdb",
        ["data.max_train=400", "train.max_epochs=2", "space.lr_head=0.01", "train.precision=bf16",
         "space.lr_encoder.high=0.1", "model.bidirectional=true"],
    )
    assert spec.data.max_train == 400 and isinstance(spec.data.max_train, int)
    assert spec.train.max_epochs == 2
    assert spec.space["lr_head"] == 0.01  # a constant: the knob is fixed
    assert spec.train.precision == "bf16"  # bare word taken as a string
    assert spec.space["lr_encoder"].high == 0.1 and spec.space["lr_encoder"].log
    assert spec.model.bidirectional is True


def test_spec_path_works_as_well_as_a_name(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text((load_spec.__globals__["STUDIES_DIR"] / "imdb.toml").read_text().replace('name = "imdb"', 'name = "mine"'))
    assert load_spec(str(path)).name == "mine"


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.max_epoch=3", ["unknown key 'train.max_epoch'", "max_epochs"]),
        ("trian.max_epochs=3", ["unknown section 'trian'"]),
        ("space.lr_tail=0.1", ["unknown key 'space.lr_tail'"]),
        ("space.lr_head.low=0.5", ["space.lr_head", "low (0.5) must be below high"]),
        ("space.lr_head.low=0.0", ["space.lr_head", "log range must be above 0"]),
        ("space.clip_norm=-1.0", ["space.clip_norm", "clip norm must be >= 0"]),
        ("space.cycle_len=0", ["space.cycle_len"]),
        ("space.dropout=1.5", ["space.dropout"]),
        ("train.max_epochs=0", ["train.max_epochs"]),
        ("train.max_epochs=2.5", ["train.max_epochs", "int"]),
        ("train.optimizer=lamb", ["train.optimizer", "adamw"]),
        ("space.lr_head.type=normal", ["space.lr_head.type"]),
        ("space.lr_div=2.6", ["lr_div excludes"]),
        ("data.valid_fraction=0.95", ["valid_fraction"]),
    ],
)
def test_invalid_specs_fail_with_one_line_naming_the_key(override, words):
    with pytest.raises(HpoError) as info:
        load_spec("imdb", [override])
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_set_without_equals_is_explained():
    with pytest.raises(HpoError, match="KEY=VALUE"):
        load_spec("imdb", ["train.max_epochs"])


def test_unknown_study_lists_known_ones():
    with pytest.raises(HpoError, match="unknown study 'imbd'.*imdb"):
        load_spec("imbd")


def test_ulmfit_parametrisation_replaces_the_lower_rates():
    raw = apply_overrides(load_spec("imdb").to_dict(), [])
    del raw["space"]["lr_embedding"], raw["space"]["lr_encoder"]
    raw["space"]["lr_div"] = {"type": "float", "low": 1.5, "high": 4.0}
    spec = spec_from_dict(raw)
    assert "lr_div" in spec.space and "lr_encoder" not in spec.space
    del raw["space"]["lr_div"]
    with pytest.raises(HpoError, match="lr_div"):
        spec_from_dict(raw)


def test_to_dict_round_trips():
    spec = load_spec("imdb", ["space.dropout=0.2", "sampler.seed=3"])
    assert spec_from_dict(spec.to_dict()) == spec
