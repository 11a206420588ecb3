"""The built-in study specs (``*.toml``), installed as the package ``hpo.studies``.

``hpo optimize --study NAME`` finds them from any directory; a ``./studies/NAME.toml`` of the
working directory wins over a built-in of the same name. ``hpo studies`` lists them.
"""
