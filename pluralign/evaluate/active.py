"""Active preference elicitation: which comparison to ask a user about next.

A question (a candidate pair) is worth asking when its answer is informative about
the user's state φ (VPL's latent z, PAL's mixture weights, ...). With S samples
φ_s from the current posterior and the model's logits l_sp of P(a ≻ b | φ_s), the
expected information gain of asking pair p is the mutual information between the
label and φ (BALD; Houlsby et al., 2011):

    I(y; φ) = H( mean_s σ(l_sp) ) − mean_s H( σ(l_sp) ),   H(p) = −p log p − (1−p) log(1−p)

It is model-agnostic: any model whose posterior can be sampled provides the logits.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pluralign.evaluate.fewshot import make_episodes, user_pair_features
from pluralign.jsonio import write_json_atomic
from pluralign.numerics import binary_entropy
from pluralign.plotting import pyplot
from pluralign.train.batches import padded_batch


def label_information_gain(logits: jax.Array) -> jax.Array:
    """Mutual information I(y; φ) in nats per candidate pair (BALD).

    logits: [S, P] logits of P(a ≻ b) under S posterior samples of the user state for P
    candidate pairs. Returns [P], in [0, log 2]: 0 where every sample agrees (or all are
    equally unsure), large where the samples confidently disagree. Jit- and vmap-friendly.
    """
    p = jax.nn.sigmoid(logits.astype(jnp.float32))  # [S, P]
    expected_entropy = jnp.mean(-(p * jax.nn.log_sigmoid(logits) + (1.0 - p) * jax.nn.log_sigmoid(-logits)), axis=0)
    # Clip: rounding can make the difference of two nearly equal entropies slightly negative.
    return jnp.maximum(binary_entropy(jnp.mean(p, axis=0)) - expected_entropy, 0.0)  # [P]


# --- active elicitation for a new user ------------------------------------------------
#
# A model that can be elicited actively exposes its amortised posterior (VPL):
#   infer_user(features [U, k, ·], labels, weights) -> states [U, S]
#   sample_latents(state [S], rng, n) -> [n, L],  latent_logits(z [n, 1, L], features [P, ·]) -> [n, P]
#   pair_logits(states [Q, S], features [Q, ·]) -> [Q]  (scores with the posterior mean)


def make_elicitation_curve(graphdef: nnx.GraphDef, n_questions: int, n_samples: int = 32):
    """Returns a jitted fn (params, tables, pool, query, rng, active) -> per-user accuracy
    [U, n_questions + 1] and query weight [U].

    For each user (vmapped; the questions are a `lax.scan`), starting from no answers:
    infer the posterior from the answers so far, score the query set with its mean,
    then ask the next pool pair: the one with the largest BALD information gain about z
    (`active=True`; z sampled from the posterior) or a uniformly random unasked one.
    The pool's labels play the user's answers. pool, query: PairBatch of [U, P] / [U, Q].
    """

    def one_user(model, pool_feats, pool_labels, pool_weights, query_feats, query_labels, query_weights, key, active):
        P = pool_labels.shape[0]
        available = pool_weights > 0

        def posterior(asked):
            feats = jax.tree.map(lambda f: f[None], pool_feats)
            return model.infer_user(feats, pool_labels[None], jnp.where(asked, pool_weights, 0.0)[None])[0]  # [S]

        def accuracy(state):
            logits = model.user_logits(state, query_feats)
            correct = ((logits > 0) == (query_labels > 0.5)).astype(query_weights.dtype) * query_weights
            return correct.sum() / jnp.maximum(query_weights.sum(), 1e-9)

        def ask(asked, step_key):
            state = posterior(asked)
            sample_key, random_key = jax.random.split(step_key)
            z = model.sample_latents(state, sample_key, n_samples)  # [n, L]
            gain = label_information_gain(model.latent_logits(z[:, None, :], pool_feats))  # [P]
            score = jnp.where(active, gain, jax.random.uniform(random_key, (P,)))
            score = jnp.where(asked | ~available, -jnp.inf, score)
            pick = jnp.argmax(score)
            asked = asked.at[pick].set(asked[pick] | available[pick])  # no-op once the pool is used up
            return asked, accuracy(state)

        asked, accs = jax.lax.scan(ask, jnp.zeros((P,), bool), jax.random.split(key, n_questions))
        return jnp.concatenate([accs, accuracy(posterior(asked))[None]])  # [n_questions + 1]

    @functools.partial(jax.jit, static_argnames="active")
    def curve(params, tables, pool, query, rng, active: bool):
        model = nnx.merge(graphdef, params)
        pool_feats, query_feats = user_pair_features(model, tables, pool), user_pair_features(model, tables, query)
        keys = jax.random.split(rng, pool.label.shape[0])
        accs = jax.vmap(lambda *a: one_user(model, *a, active))(
            pool_feats, pool.label, pool.weight, query_feats, query.label, query.weight, keys
        )
        return accs, query.weight.sum(axis=1)

    return curve


def evaluate_active(
    graphdef, params, tables, comparisons, users: np.ndarray, *, n_questions: int = 16, pool_size: int = 32,
    n_samples: int = 32, seed: int = 0, mode: str = "random",
) -> dict:
    """Accuracy-vs-number-of-questions of active (BALD) and random selection on unseen users.

    Each user's comparisons are split into a query half and a pool (`fewshot.make_episodes`);
    questions are asked from the pool, up to `n_questions`. Users whose pool is smaller than
    `n_questions` are left out. Accuracy is pooled over every query pair of the users
    (as the few-shot curves are). `params`: one seed's parameters.
    """

    if pool_size < n_questions:
        raise ValueError(f"active elicitation: pool_size ({pool_size}) must be >= n_questions ({n_questions})")
    episodes = make_episodes(comparisons, np.asarray(users), max_shots=pool_size, mode=mode, seed=seed)
    keep = episodes.pool_size >= n_questions
    if not keep.any():
        raise ValueError(f"active elicitation: no user has {n_questions} pool pairs; lower n_questions")
    pool, query = padded_batch(comparisons, episodes.pool[keep]), padded_batch(comparisons, episodes.query[keep])
    curve = make_elicitation_curve(graphdef, n_questions, n_samples)
    out = {"questions": list(range(n_questions + 1)), "n_users": int(keep.sum()), "mode": mode}
    for name, active in (("active", True), ("random", False)):
        accs, weight = curve(params, tables, pool, query, jax.random.PRNGKey(seed), active=active)
        accs, weight = np.asarray(accs), np.asarray(weight)
        out[name] = (accs * weight[:, None]).sum(axis=0) / max(weight.sum(), 1e-9)
        out[name] = [float(a) for a in out[name]]
    return out


def questions_to_reach(curve: list[float], target: float) -> int | None:
    """The fewest questions after which `curve` is at least `target` (None: never)."""
    hits = [t for t, a in enumerate(curve) if a >= target]
    return hits[0] if hits else None


def save_active_report(result: dict, out_dir, reference_questions: int = 8) -> dict:
    """Writes active.json (numbers) and active.png (the two curves) into out_dir; returns the
    summary: random's accuracy after `reference_questions` questions and how many questions
    active selection needs to reach it."""

    plt = pyplot()


    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = dict(result)
    if reference_questions < len(result["random"]):
        target = result["random"][reference_questions]
        summary["random_accuracy_at_reference"] = target
        summary["reference_questions"] = reference_questions
        summary["active_questions_to_reach_it"] = questions_to_reach(result["active"], target)
    write_json_atomic(out_dir / "active.json", summary)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(result["questions"], result["active"], "o-", label="active (BALD)")
    ax.plot(result["questions"], result["random"], "s--", label="random")
    ax.set_xlabel("questions answered")
    ax.set_ylabel("query accuracy")
    ax.set_title(f"Active vs random elicitation ({result['n_users']} unseen users)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "active.png", dpi=120)
    plt.close(fig)
    return summary
