"""The ``speculative`` job: every method on real models, over prompts, resumable.

:mod:`~experiments.speculative.settings` turns the config into typed settings once;
:mod:`~experiments.speculative.job` runs them (see its docstring for the parts).
"""
