"""Study specs: what a study tunes and how, as plain, validated data.

* :mod:`hpo.spec.schema`: the frozen dataclasses (``Spec`` and its sections), each validating
  itself when built;
* :mod:`hpo.spec.files`: built-in and local TOML files, ``--set KEY=VALUE`` overrides;
* :mod:`hpo.spec.knobs`: the tunable knobs of ``[space]``, their rules, and the training
  configuration a trial's values give.

Example::

    spec = load_spec("imdb", ["train.max_epochs=2", "space.lr_head=0.003"])
    spec.space["lr_head"]            # 0.003, a constant: the knob is fixed
"""

from hpo.spec.files import apply_overrides, builtin_studies, load_spec, spec_from_dict
from hpo.spec.knobs import group_lrs, knobs, train_config
from hpo.spec.schema import (
    CategoricalParam,
    DataSpec,
    DivergenceSpec,
    FloatParam,
    IntParam,
    ModelSpec,
    Param,
    PretrainSpec,
    PrunerSpec,
    SamplerSpec,
    SpaceEntry,
    Spec,
    TrainSpec,
)

__all__ = [
    "CategoricalParam", "DataSpec", "DivergenceSpec", "FloatParam", "IntParam", "ModelSpec", "Param", "PretrainSpec",
    "PrunerSpec", "SamplerSpec", "SpaceEntry", "Spec", "TrainSpec", "apply_overrides", "builtin_studies",
    "group_lrs", "knobs", "load_spec", "spec_from_dict", "train_config",
]
