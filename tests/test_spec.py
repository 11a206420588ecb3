import importlib.resources
import warnings

import pytest

from hpo.errors import HpoError
from hpo.spec import (DataSpec, DivergenceSpec, FloatParam, IntParam, ModelSpec, PrunerSpec, Spec, TrainSpec, apply_overrides,
                      builtin_studies, group_lrs, load_spec, spec_from_dict, trial_model)

IMDB_TOML = importlib.resources.files("hpo.studies").joinpath("imdb.toml")


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
    path.write_text(IMDB_TOML.read_text().replace('name = "imdb"', 'name = "mine"'))
    assert load_spec(str(path)).name == "mine"


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.max_epoch=3", ["unknown key 'train.max_epoch'", "max_epochs"]),
        ("trian.max_epochs=3", ["unknown section 'trian'"]),
        ("space.lr_tail=0.1", ["knobs without a group: space.lr_tail", "(embedding, encoder, head)"]),
        ("space.foo=0.1", ["unknown key 'space.foo'", "clip_norm"]),
        ("model.factory=mymodels", ["model.factory = 'mymodels'", "package.module:function"]),
        ("model.options.kernel=3", ["model.options (kernel)", "built-in LSTM takes none"]),
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
        ("space.lr_head=abc", ["space.lr_head = 'abc' is not a number"]),
        ("pruner.n_warmup_steps=1", ["renamed", "pruner.warmup_epochs"]),
        ("pruner.type=sha", ["pruner.type", "successive_halving"]),
        ("space.bidirectional=1", ["space.bidirectional = 1 is not true or false"]),
        ("space.hidden_size={type='float',low=64.0,high=256.0}", ["space.hidden_size is a whole number", "type = 'int'"]),
        ("space.num_layers=0", ["space.num_layers allows 0"]),
        ("space.embed_dropout=1.0", ["space.embed_dropout allows 1.0", "[0, 1)"]),
        ("model.embed_dropout=-0.1", ["model.embed_dropout", "[0, 1)"]),
        ("space.num_layers={type='int',low=1,high=2} model.group_per_layer=true",
         ["space.num_layers with model.group_per_layer", "different layer groups"]),
        ("space.hidden_size=64 pretrain.epochs=1", ["space.hidden_size changes the encoder's shape", "pretrain.epochs = 0"]),
        ("space.bidirectional=true model.factory='model_factories:bag'",
         ["space.bidirectional varies the built-in LSTM's [model] keys", "model.options"]),
    ],
)
def test_invalid_specs_fail_with_one_line_naming_the_key(override, words):
    with pytest.raises(HpoError) as info:
        load_spec("imdb", override.split(" "))
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


@pytest.mark.parametrize(
    "build, key",
    [
        (lambda: DataSpec(max_len=0), "data.max_len"),
        (lambda: DataSpec(valid_fraction=0.7, test_fraction=0.4), "valid_fraction"),
        (lambda: ModelSpec(hidden_size=-1), "model.hidden_size"),
        (lambda: TrainSpec(precision="fp16"), "train.precision"),
        (lambda: TrainSpec(lr_min_ratio=1.0), "train.lr_min_ratio"),
        (lambda: PrunerSpec(percentile=100.0), "pruner.percentile"),
        (lambda: DivergenceSpec(threshold=0.0), "divergence.threshold"),
        (lambda: Spec(name="x", space={"lr_head": 0.01}), "space.clip_norm is missing"),
    ],
)
def test_sections_built_directly_validate_themselves(build, key):
    with pytest.raises(HpoError, match=key.replace(".", r"\.")):
        build()


def test_per_layer_groups_get_their_own_rates_or_ulmfit_division():
    raw = apply_overrides(load_spec("imdb").to_dict(), ["model.num_layers=3", "model.group_per_layer=true"])
    # One error with both sides: the groups that lack a rate, and the rate that names no group.
    with pytest.raises(HpoError, match=r"groups without a knob: encoder1, encoder2, encoder3 \(give space.lr_encoder1, "
                                       r"space.lr_encoder2, space.lr_encoder3, or space.lr_head and space.lr_div.*"
                                       r"knobs without a group: space.lr_encoder \(remove them\)"):
        spec_from_dict(raw)
    del raw["space"]["lr_encoder"]
    with pytest.raises(HpoError, match="give space.lr_encoder1, space.lr_encoder2, space.lr_encoder3, or space.lr_head and space.lr_div"):
        spec_from_dict(raw)
    del raw["space"]["lr_embedding"]
    raw["space"]["lr_div"] = 2.6
    spec = spec_from_dict(raw)
    assert spec.model.groups == ("embedding", "encoder1", "encoder2", "encoder3", "head")
    lrs = group_lrs({"lr_head": 1e-2, "lr_div": 10.0}, spec.model.groups)
    assert lrs == pytest.approx({"head": 1e-2, "encoder3": 1e-3, "encoder2": 1e-4, "encoder1": 1e-5, "embedding": 1e-6})


def test_builtin_studies_are_listed_and_a_local_spec_wins(tmp_path, monkeypatch):
    assert "imdb" in builtin_studies() and builtin_studies()["imdb"].startswith("LSTM on IMDB")
    monkeypatch.chdir(tmp_path)
    assert load_spec("imdb").description == builtin_studies()["imdb"]  # from anywhere
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "imdb.toml").write_text(IMDB_TOML.read_text().replace("max_epochs = 5", "max_epochs = 7"))
    assert load_spec("imdb").train.max_epochs == 7


def test_building_a_sampler_or_opening_a_storage_leaves_warning_filters_alone(tmp_path):
    from hpo.storage.database.resilient import open_storage
    from hpo.search.study import make_sampler

    before = list(warnings.filters)
    make_sampler(load_spec("imdb").sampler, seed=0)
    open_storage(f"sqlite:///{tmp_path / 'x.db'}", grace_period=10)
    assert warnings.filters == before


def test_a_model_factory_defers_its_rates_to_the_built_model_and_round_trips():
    """A factory's groups are unknown until it is built: any lr_<name> passes here, dropout may be
    left out, and the factory (a name or, from Python, a function) is stored as its name."""
    from hpo.spec import BUILTIN_FACTORY

    spec = load_spec("imdb", ["model.factory=mymodels.text:cnn", "space.lr_conv=0.01", "model.options.kernel=5",
                              "model.options.widths=[3, 4]"])
    assert spec.model.groups is None and not spec.model.builtin
    assert spec.model.options == {"kernel": 5, "widths": [3, 4]}
    assert spec_from_dict(spec.to_dict()) == spec
    raw = spec.to_dict()
    del raw["space"]["dropout"]
    assert "dropout" not in spec_from_dict(raw).space
    with pytest.raises(HpoError, match="space.dropout is missing"):  # the built-in LSTM still needs it
        spec_from_dict({**raw, "model": {}})
    with pytest.raises(HpoError, match="pretrain.epochs pretrains the built-in LSTM"):
        load_spec("imdb", ["model.factory=mymodels.text:cnn", "pretrain.epochs=1"])
    assert load_spec("imdb").model.factory == BUILTIN_FACTORY and load_spec("imdb").model.builtin

    from hpo.training.models import lstm

    as_function = ModelSpec(factory=lstm)
    assert as_function.builtin and as_function.groups == ("embedding", "encoder", "head")
    assert Spec(name="x", model=as_function, space=load_spec("imdb").space).to_dict()["model"]["factory"] == BUILTIN_FACTORY
    with pytest.raises(HpoError, match="model.factory"):
        ModelSpec(factory=lambda v, k, m: None)  # a name no other process could import


def test_model_knobs_set_the_trials_model_keys_and_leave_the_rest():
    spec = load_spec("imdb", ["space.bidirectional={type='categorical',choices=[false,true]}", "space.hidden_size=64",
                              "space.embed_dropout={type='float',low=0.0,high=0.3}"])
    assert spec.model.hidden_size == 128 and not spec.model.bidirectional  # [model]: what the study checks first
    model = trial_model(spec.model, {"bidirectional": True, "hidden_size": 64, "embed_dropout": 0.2, "lr_head": 0.01})
    assert (model.bidirectional, model.hidden_size, model.embed_dropout) == (True, 64, 0.2)
    assert (model.embedding_dim, model.num_layers, model.factory) == (spec.model.embedding_dim, 1, spec.model.factory)
    assert trial_model(spec.model, {"lr_head": 0.01}) is spec.model
