"""Model factories: your model built by name, its layer groups checked against the knobs before any training."""

from __future__ import annotations

import pytest
import torch

from hpo.errors import HpoError
from hpo.spec import apply_overrides, load_spec, spec_from_dict
from hpo.training.config import train_config
from hpo.training.models import LSTMClassifier, build_model, check_model, groups_of, lstm

BAG = ["model.factory=model_factories:bag", "space.lr_words=0.01", "space.lr_out=0.01"]


def _spec(overrides: list[str]):
    """The default study with the built-in LSTM's rates taken out of [space], then ``overrides``."""
    raw = load_spec("imdb").to_dict()
    raw["space"] = {k: v for k, v in raw["space"].items() if not k.startswith("lr_")}
    return spec_from_dict(apply_overrides(raw, overrides))


def test_the_builtin_lstm_is_a_factory_giving_the_same_weights_as_before():
    """build_model through the factory: the same seeded weights as the classifier built directly,
    and the trial's dropout on every nn.Dropout of the model."""
    spec = load_spec("imdb", ["model.embedding_dim=8", "model.hidden_size=8"])
    built = build_model(spec, 50, 0.3, seed=4)
    torch.manual_seed(4)
    direct = LSTMClassifier(50, 8, 8, dropout=0.3)
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), direct.state_dict().values()))
    assert {m.p for m in built.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}
    assert isinstance(lstm(50, 4, spec.model), LSTMClassifier)
    assert lstm(50, 4, spec.model)(torch.tensor([[2, 3]]), torch.tensor([2])).shape == (1, 4)  # K classes: K logits
    assert check_model(spec, 50) == ("embedding", "encoder", "head")


def test_a_factory_by_name_builds_its_model_with_its_options_and_its_groups_get_their_rates():
    spec = _spec([*BAG, "model.options.dim=6"])
    model = build_model(spec, 40, 0.25, num_classes=3)
    assert type(model).__name__ == "Bag" and model.embedding.embedding_dim == 6 and model.out.out_features == 3
    assert model.drop.p == 0.25
    assert check_model(spec, 40, 3) == ("words", "out")
    values = {"lr_words": 0.01, "lr_out": 0.02, "clip_norm": 1.0, "cycle_len": 1, "dropout": 0.1, "weight_decay": 0.0}
    cfg = train_config(spec, values, groups=list(groups_of(model)))
    assert dict(cfg.lrs) == {"words": 0.01, "out": 0.02}


def test_groups_without_a_knob_and_knobs_without_a_group_are_one_error_listing_both():
    spec = load_spec("imdb", ["model.factory=model_factories:bag", "space.lr_words=0.01"])  # the LSTM's rates stay
    with pytest.raises(HpoError) as info:
        check_model(spec, 40)
    message = str(info.value)
    assert "\n" not in message and "model.factory 'model_factories:bag'" in message and "(words, out)" in message
    assert "groups without a knob: out (give space.lr_out)" in message
    assert "knobs without a group: space.lr_embedding, space.lr_encoder, space.lr_head (remove them)" in message


@pytest.mark.parametrize("overrides, words", [
    (["model.factory=no_such_module:f"], ["no module named 'no_such_module'", "current folder"]),
    (["model.factory=model_factories:nope"], ["has no 'nope'"]),
    (["model.factory=model_factories:NOT_A_FUNCTION"], ["is a int, not a function"]),
    (["model.factory=model_factories:bag_wrong_shape"], ["logits of shape (2, 8)", "(B,) one logit per text, or (B, 2)"]),
    (["model.factory=model_factories:bag_half_grouped"], ["parameters in no layer group would never train (out.weight, out.bias)"]),
    (["model.factory=model_factories:bag_without_groups"], ["has no param_groups()"]),
    (["model.options.dropout=false"], ["space.dropout sets the rate of every nn.Dropout", "which has none"]),
])
def test_a_model_that_does_not_fit_is_one_clear_error(overrides, words):
    spec = _spec([*BAG, *overrides])
    with pytest.raises(HpoError) as info:
        check_model(spec, 40)
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_two_logits_for_two_classes_are_allowed_and_dropout_may_be_left_out():
    spec = _spec([*BAG, "model.factory=model_factories:bag_two_logits"])
    assert check_model(spec, 40) == ("words", "out")
    raw = spec.to_dict()
    del raw["space"]["dropout"]
    kept = spec_from_dict(raw)
    assert build_model(kept, 40, None).drop.p == 0.5  # as the factory built it
