"""The ``toy_demo`` job: every method on n-gram models with known conditionals, no weights."""
