"""Studies: one package per study, on top of the shared layers.

Each study owns its preprocessing, datasets, protocol scores, evaluation, figures and CLI subcommands
(``ctlib/studies/<study>/cli.py`` with ``add_subcommands(subparsers)``, found by ``ctlib.cli``). A study
imports the shared layers and never another study (import-linter's independence contract); what two
studies need moves down into a layer.

- ``interp``: slice interpolation by latent diffusion (thick 5 mm slices in, thin 1 mm out).
- ``dose``: radiotherapy dose prediction on OpenKBP.
"""
