"""The ``distill`` job: train a small draft on the target's laws, export it, evaluate it.

:mod:`~experiments.distill.settings` checks the config; :mod:`~experiments.distill.job`
runs the stages (teacher laws, training, export, evaluation).
"""
