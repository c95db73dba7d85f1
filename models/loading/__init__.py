"""From files to models: presets, GGUF and HF directories, tokenizers, exported drafts.

The entry points are re-exported here (:mod:`models.loading.load`,
:mod:`models.loading.compat`); the formats live in the modules beside them.
"""

from models.loading.compat import check_compatible
from models.loading.load import content_digest, load_model, load_model_info, load_tokenizer

__all__ = ["check_compatible", "content_digest", "load_model", "load_model_info", "load_tokenizer"]
