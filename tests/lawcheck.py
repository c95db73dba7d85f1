"""Shared machinery for exactness tests: exact enumeration and fixed-threshold statistics.

Not a test module (pytest collects ``*_test.py`` only).

Thresholds are fixed here, in advance, for every test that uses them:

* exact enumeration: float64, every probability within ``EXACT_TOL = 1e-9``;
* statistical: a chi-square goodness-of-fit test (cells with expected count
  below 5 pooled into one) must give ``p >= ALPHA = 1e-3``; the negative
  controls must give ``p < ALPHA``. Seeds are fixed, so results are
  deterministic; the level bounds the chance that a correct implementation
  would have been rejected at a random seed.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from models import toy
from rsd_jax import drafting, tree_verifiers, verify, walk
from rsd_jax import tree as tree_lib

EXACT_TOL = 1e-9
ALPHA = 1e-3


def chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square goodness-of-fit p-value, pooling cells with expected count < 5.

    Observed counts in cells of zero expected probability give p = 0.
    """
    counts = np.asarray(counts, np.float64).ravel()
    probs = np.asarray(probs, np.float64).ravel()
    n = counts.sum()
    if np.any(counts[probs <= 0] > 0):
        return 0.0
    expected = probs * n
    small = expected < 5
    obs = np.concatenate([counts[~small], [counts[small].sum()]])
    exp = np.concatenate([expected[~small], [expected[small].sum()]])
    keep = exp > 0
    if keep.sum() < 2:
        return 1.0
    return float(stats.chisquare(obs[keep], exp[keep] * obs[keep].sum() / exp[keep].sum()).pvalue)


def seq_code(seq, vocab: int) -> int:
    """Mixed-radix code of a token sequence."""
    code = 0
    for x in seq:
        code = code * vocab + int(x)
    return code


def extended_law(emitted: dict, target_table: np.ndarray, prefix: tuple, length: int) -> np.ndarray:
    """Law of the emitted sequence continued by target sampling to ``length`` ids.

    Args:
      emitted: ``{tuple(tokens): prob}`` over emitted sequences of length 1..length.
      target_table: n-gram table of the target.
      prefix: committed ids before the round (root token last).
      length: ``L + 1``.

    Returns:
      ``[V**length]`` probabilities indexed by :func:`seq_code`.
    """
    vocab = target_table.shape[-1]
    out = np.zeros(vocab**length)
    for seq, mass in emitted.items():
        if mass == 0:
            continue
        m = len(seq)
        for tail in itertools.product(range(vocab), repeat=length - m):
            full = tuple(seq) + tail
            out[seq_code(full, vocab)] += mass * toy.sequence_prob(
                target_table, tuple(prefix) + tuple(seq), tail
            )
    return out


def target_law(target_table: np.ndarray, prefix: tuple, length: int) -> np.ndarray:
    """``[V**length]`` joint law of ``length`` target tokens after ``prefix``."""
    vocab = target_table.shape[-1]
    law = toy.joint_law(target_table, tuple(prefix), length)
    out = np.zeros(vocab**length)
    for seq, p in law.items():
        out[seq_code(seq, vocab)] = p
    return out


def _ordered_options(probs: np.ndarray, b: int):
    """All without-replacement outcomes of Gumbel-Top-``b`` from ``probs`` with their probs.

    Yields ``(tokens[b], valid[b], prob)``; when the support has ``m < b`` ids
    the outcomes have ``m`` valid slots (as the sampler produces).
    """
    support = [x for x in range(len(probs)) if probs[x] > 0]
    m = min(b, len(support))
    out = []
    for tup in itertools.permutations(support, m):
        prob, taken = 1.0, []
        for x in tup:  # product of the renormalised conditionals p_i(x_i)
            left = sum(probs[y] for y in range(len(probs)) if y not in taken)  # no cancellation
            prob *= probs[x] / left
            taken.append(x)
        tokens = list(tup) + [0] * (b - m)
        valid = [True] * m + [False] * (b - m)
        out.append((tokens, valid, prob))
    return out


def enumerate_trees(spec: tree_lib.TreeSpec, draft_table, prefix: tuple):
    """Every drafted tree of a static-topology spec with its probability (float64).

    Args:
      spec: chain, iid or branching spec (beam trees are continuous: not here).
      draft_table: n-gram table of the draft.
      prefix: committed ids, root token last.

    Returns:
      ``(trees, probs)``: a batched :class:`tree_lib.Tree` with leading axis T
      and ``[T]`` probabilities summing to one.
    """
    if spec.runtime_parents:
        raise ValueError("beam trees cannot be enumerated")
    n = spec.num_nodes + 1
    order = draft_table.ndim
    vocab = draft_table.shape[-1]
    parents = spec.static_parents()
    depths = spec.depths
    partial = [([int(prefix[-1])] + [0] * (n - 1), [True] + [False] * (n - 1), 1.0)]

    def ctx(tokens, valid, slot):
        path = []
        cur = slot
        while cur > 0:
            path.append(tokens[cur])
            cur = parents[cur]
        path = list(prefix) + path[::-1]
        return toy.context_of(tuple(path), order, vocab)

    for level in range(1, spec.depth + 1):
        prev = spec.level_slice(level - 1)
        cur = spec.level_slice(level)
        parent_slots = list(range(prev.start, prev.stop))
        if spec.sibling_law == "iid":
            groups = [[parents[s]] for s in range(cur.start, cur.stop)]
            widths = [1] * len(groups)
            child_slots = [[s] for s in range(cur.start, cur.stop)]
        else:
            b = spec.branching[level - 1]
            groups = [[p] for p in parent_slots]
            widths = [b] * len(groups)
            child_slots = [
                list(range(cur.start + i * b, cur.start + (i + 1) * b)) for i in range(len(groups))
            ]
        options = {}
        for (parent,), width, slots in zip(groups, widths, child_slots, strict=True):
            expanded = []
            for tokens, valid, prob in partial:
                if not valid[parent]:
                    expanded.append((tokens, valid, prob))
                    continue
                c = ctx(tokens, valid, parent)
                if (c, width) not in options:
                    options[c, width] = _ordered_options(draft_table[c], width)
                for opt_tokens, opt_valid, opt_prob in options[c, width]:
                    t, v = list(tokens), list(valid)
                    for s, x, ok in zip(slots, opt_tokens, opt_valid, strict=True):
                        t[s], v[s] = x, ok
                    expanded.append((t, v, prob * opt_prob))
            partial = expanded
    tokens = np.asarray([t for t, _, _ in partial], np.int32)
    valid = np.asarray([v for _, v, _ in partial], bool)
    probs = np.asarray([p for _, _, p in partial])
    trees = tree_lib.Tree(
        tokens=jnp.asarray(tokens),
        parents=jnp.broadcast_to(jnp.asarray(parents), tokens.shape),
        valid=jnp.asarray(valid),
        depth=jnp.broadcast_to(jnp.asarray(depths), tokens.shape),
    )
    return trees, probs


def tree_rule(verifier) -> tree_verifiers.TreeVerifier:
    """``verifier`` as a tree verifier: a node verifier is walked, a tree verifier kept."""
    if isinstance(verifier, verify.NodeVerifier):
        return tree_verifiers.node_walk(verifier)
    return verifier


def exact_round_law(spec, verifier, draft_table, target_table, prefix, chunk=4096):
    """Exact law of one round's emitted sequence: ``{tuple(tokens): prob}``.

    Enumerates every drafted tree, computes each tree's exact outcome law and
    aggregates over emitted sequences. ``verifier`` is a tree verifier
    (:mod:`rsd_jax.tree_verifiers`, whose ``output_law`` uses the plans and
    candidate logic its sampler uses) or a node verifier, walked.
    """
    law_of = tree_rule(verifier).output_law
    trees, probs = enumerate_trees(spec, draft_table, prefix)
    order, vocab = draft_table.ndim, draft_table.shape[-1]
    ctx_prefix = jnp.asarray(toy.context_of(tuple(prefix[:-1]), order, vocab), jnp.int32)
    dt, tt = jnp.asarray(draft_table), jnp.asarray(target_table)

    def one(tree):
        p = toy.tree_probs(dt, ctx_prefix, tree)
        q = toy.tree_probs(tt, ctx_prefix, tree)
        return law_of(spec, tree, q, p)

    law_fn = jax.jit(jax.vmap(one))
    parents = spec.static_parents()
    depths = spec.depths
    ancestors = []  # per slot: slots on the path root -> slot, root excluded
    for slot in range(spec.num_nodes + 1):
        path, cur = [], slot
        while cur > 0:
            path.append(cur)
            cur = int(parents[cur])
        ancestors.append(path[::-1])
    # emit[m][code]: probability that the round emits the length-m sequence `code`.
    emit = [None] + [np.zeros(vocab**m) for m in range(1, spec.depth + 2)]
    toks_all = np.asarray(trees.tokens)
    for start in range(0, len(probs), chunk):
        sub = jax.tree.map(lambda a, s=start: a[s : s + chunk], trees)
        laws = np.asarray(law_fn(sub)) * probs[start : start + chunk, None, None]
        toks = toks_all[start : start + chunk]
        for slot, path in enumerate(ancestors):
            code = np.zeros(len(toks), np.int64)
            for s in path:
                code = code * vocab + toks[:, s]
            m = int(depths[slot]) + 1
            idx = code[:, None] * vocab + np.arange(vocab)[None, :]
            np.add.at(emit[m], idx.ravel(), laws[:, slot, :].ravel())
    emitted = {}
    for m in range(1, spec.depth + 2):
        for code in np.nonzero(emit[m])[0]:
            seq = np.unravel_index(code, (vocab,) * m)
            emitted[tuple(int(x) for x in seq)] = float(emit[m][code])
    return emitted


def node_law(plan_fn, q, p, k: int, proposal: str) -> tuple[np.ndarray, float]:
    """Exact law of the token emitted at one node with ``k`` drafted children.

    Enumerates every draw of the children (i.i.d. or without replacement, with
    invalid slots when the support is smaller than ``k``) and every
    accept/reject branch of ``plan_fn``.

    Returns:
      ``(law [V], acceptance)``: the emitted token's law and the probability
      that some child was accepted.
    """
    q, p = np.asarray(q, np.float64), np.asarray(p, np.float64)
    vocab = len(q)
    plan_fn = jax.jit(plan_fn)
    if proposal == "iid":
        support = [x for x in range(vocab) if p[x] > 0]
        draws = [
            (list(t), [True] * k, float(np.prod(p[list(t)])))
            for t in itertools.product(support, repeat=k)
        ]
    else:
        draws = _ordered_options(p, k)
    law, accepted = np.zeros(vocab), 0.0
    for tokens, valid, prob in draws:
        plan = plan_fn(jnp.asarray(q), jnp.asarray(p), jnp.asarray(tokens), jnp.asarray(valid))
        a = np.asarray(plan.accept_prob)
        reach = prob
        for i in range(k):
            law[tokens[i]] += reach * a[i]
            accepted += reach * a[i]
            reach *= 1.0 - a[i]
        law += reach * np.asarray(plan.residual)
    return law, accepted


def speculative_round(key, spec, verifier, draft_table, target_table, prefix):
    """One speculative round with n-gram draft/target tables and no cache: the draft loop
    and the node walk called directly, to test them apart from the engine.

    Args:
      key: PRNG key (split into drafting and verification keys).
      spec: static tree shape.
      verifier: node verifier.
      draft_table, target_table: n-gram tables (float32 arrays of the same order).
      prefix: committed ids (Python ints), the root token last.

    Returns:
      ``(tree, WalkResult)``.
    """
    order, vocab = target_table.ndim, target_table.shape[-1]
    ctx = jnp.asarray(toy.context_of(tuple(prefix[:-1]), order, vocab), jnp.int32)
    k_draft, k_verify = jax.random.split(key)
    tree, p = drafting.draft_tree(
        k_draft,
        spec,
        prefix[-1],
        lambda t, level: toy.tree_probs(draft_table, ctx, t)[spec.level_slice(level)],
    )
    q = toy.tree_probs(target_table, ctx, tree)
    return tree, walk.verify_tree(k_verify, spec, tree, q, p, verifier)
