"""Developer tools: ``python -m experiments.tools.api_docs`` writes docs/api.md."""
