"""Text in, text out: any method on a loaded pair, from Python or from
``python -m experiments.generate``.

See :mod:`experiments.text.generator` (the API), :mod:`experiments.text.decoding` (the round
loop: streaming, stop strings), :mod:`experiments.text.batch` (JSONL prompt files) and
:mod:`experiments.text.chat` (a terminal chat).
"""

from experiments.text.generator import GenerationError, TextGenerator
from experiments.text.results import Completion, Stats

__all__ = ["Completion", "GenerationError", "Stats", "TextGenerator"]
