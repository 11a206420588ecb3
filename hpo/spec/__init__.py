"""Study specs: what a study tunes and how, as plain, validated data.

* :mod:`hpo.spec.schema`: the frozen dataclasses (``Spec`` and its sections), each validating
  itself when built;
* :mod:`hpo.spec.files`: built-in and local TOML files, ``--set KEY=VALUE`` overrides;
* :mod:`hpo.spec.params`: what a knob takes: a distribution (float, int, categorical) or a constant;
* :mod:`hpo.spec.knobs`: the tunable knobs of ``[space]`` and their rules.

Example::

    spec = load_spec("imdb", ["train.max_epochs=2", "space.lr_head=0.003"])
    spec.space["lr_head"]            # 0.003, a constant: the knob is fixed
"""

from hpo.spec.files import apply_overrides, builtin_studies, load_spec, spec_from_dict
from hpo.spec.knobs import MODEL_KNOBS, check_rates, group_lrs, is_rate, knobs, lr_param, trial_model
from hpo.spec.params import CategoricalParam, FloatParam, IntParam, Param, SpaceEntry
from hpo.spec.schema import (
    BUILTIN_FACTORY,
    LAYER_GROUPS,
    ArtifactsSpec,
    DataSpec,
    DivergenceSpec,
    ModelSpec,
    PretrainSpec,
    PrunerSpec,
    SamplerSpec,
    Spec,
    TrainSpec,
    factory_name,
    layer_groups,
)

__all__ = [
    "BUILTIN_FACTORY", "LAYER_GROUPS", "MODEL_KNOBS", "ArtifactsSpec", "CategoricalParam", "DataSpec", "DivergenceSpec", "FloatParam", "IntParam",
    "ModelSpec", "Param", "PretrainSpec",
    "PrunerSpec", "SamplerSpec", "SpaceEntry", "Spec", "TrainSpec", "apply_overrides", "builtin_studies",
    "check_rates", "factory_name", "group_lrs", "is_rate", "knobs", "layer_groups", "load_spec", "lr_param", "spec_from_dict",
    "trial_model",
]
