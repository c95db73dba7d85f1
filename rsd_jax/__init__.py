"""rsd_jax: lossless tree speculative decoding (Recursive Speculative Decoding) in JAX.

Pure, model-agnostic building blocks, all jit/vmap friendly with explicit PRNG
keys. See docs/api.md for the API and docs/algorithms.md for the mathematics.

Start with :mod:`rsd_jax.interface` (what a model must provide). The entry points are
re-exported here: ``generate`` (the function; its module is :mod:`rsd_jax.generation`),
``Model``, ``SamplingParams`` and ``parse`` (the compact method syntax).
"""

from rsd_jax.drafting import draft_tree, empty_tree
from rsd_jax.generation import generate
from rsd_jax.gumbel import gumbel_top_k, ordered_sample_prob, without_replacement_laws
from rsd_jax.interface import Model
from rsd_jax.methods import parse
from rsd_jax.sbs import BeamLevel, sbs_level, truncated_gumbel_scores
from rsd_jax.transforms import (
    SamplingParams,
    ban_ids,
    log_probs_from_logits,
    probs_from_logits,
    safe_log,
    top_p_threshold,
    vocab_mask,
)
from rsd_jax.tree import Tree, TreeSpec, ancestor_mask, beam, branching, chain, iid
from rsd_jax.verify import (
    VERIFIERS,
    NodeDecision,
    NodePlan,
    NodeVerifier,
    get_verifier,
    kseq_plan,
    kseq_rho,
    mrs_plan,
    rrs_plan,
    sample_plan,
    sd_plan,
)
from rsd_jax.walk import WalkResult, candidates, output_law, verify_tree

__version__ = "0.1.0"

__all__ = [
    "VERIFIERS",
    "BeamLevel",
    "Model",
    "NodeDecision",
    "NodePlan",
    "NodeVerifier",
    "SamplingParams",
    "Tree",
    "TreeSpec",
    "WalkResult",
    "ancestor_mask",
    "ban_ids",
    "beam",
    "branching",
    "candidates",
    "chain",
    "draft_tree",
    "empty_tree",
    "generate",
    "get_verifier",
    "gumbel_top_k",
    "iid",
    "kseq_plan",
    "kseq_rho",
    "log_probs_from_logits",
    "mrs_plan",
    "ordered_sample_prob",
    "output_law",
    "parse",
    "probs_from_logits",
    "rrs_plan",
    "safe_log",
    "sample_plan",
    "sbs_level",
    "sd_plan",
    "top_p_threshold",
    "truncated_gumbel_scores",
    "verify_tree",
    "vocab_mask",
    "without_replacement_laws",
]
