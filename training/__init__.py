"""LabelSharingSeg training tools: datasets, training, evaluation, benchmarks and the ``lsseg`` CLI.

Installed under the import name ``lsseg_training`` (the folder is ``training/``); depends on the
engine (``LabelSharingSegLib.engine``), nothing depends on it.
"""
