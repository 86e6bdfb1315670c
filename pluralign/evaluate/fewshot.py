"""The evaluation protocol shared by every model (docs/design/evaluation-protocol.md).

Seen users: accuracy, log-loss, ECE and per-user accuracy on their held-out pairs.

Unseen users: for each user an *episode* splits their comparisons into a query set
and a support pool. For k shots the first k pool pairs are the support; the user's
state is inferred from them with θ frozen (`model.infer_user`, vmapped over users in
one call) and scored on the query set, which is the same for every k. Two modes:

- `random`: query = a random half of the user's comparisons, pool = the rest (less any
  copy of a query comparison). Support and query usually share items, so a model can
  gain by remembering how this user judged the very items that reappear in the query:
  on dense rating data most of the few-shot gain can come from that.
- `item_disjoint` (item split): the user's *items* are split in two random halves; the
  pool is the user's comparisons with both items in the first half, the query those
  with both items in the second (comparisons across the halves are unused). No query
  item is in the support, so this measures generalization of the user's taste to new
  items. It exists on dense rating data (every user rates the same items) as on choice
  data where items never repeat.

A user enters the k-shot figure only if their pool holds at least k pairs and their
query at least one (the number of users per k is reported), and a k is reported only if
at least `min_user_fraction` of the users enter it. Episodes are drawn per seed and per
draw and depend only on the data, the users and (seed, draw), never on the model.
"""

from __future__ import annotations

import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pluralign.data.duplicates import comparison_keys
from pluralign.data.format import Comparisons
from pluralign.data.splits import rows_by_user
from pluralign.evaluate import metrics
from pluralign.models import base
from pluralign.train.batches import padded_batch


@dataclasses.dataclass
class EvalConfig:
    shots: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 5, 10, 20, 50])  # k: support comparisons per unseen user
    # support/query split: random (as in the papers) and/or item_disjoint (no item shared; docs/design/evaluation-protocol.md)
    modes: list[str] = dataclasses.field(default_factory=lambda: ["random", "item_disjoint"])
    draws: int = 2  # support/query draws per seed
    # A k is reported only where at least this fraction of the users have k support pairs:
    # a figure from the few users with unusually many comparisons would be biased.
    min_user_fraction: float = 0.5
    # Few-shot inference for models with fitted user states (`PreferenceModel.fits_user_state`):
    # "bayes" = empirical Bayes (a Gaussian prior fitted to the seen users' states, Laplace
    # posterior, posterior-predictive probabilities), its precision times a fitted multiplier;
    # "map" = MAP under an isotropic prior of a fitted precision. Models without fitted states ignore it.
    inference: str = "bayes"
    # The grids the prior's scale is fitted on, continuously between their values
    # (pluralign.evaluate.shrinkage): on seen users' held-out comparisons and unseen-val users, in
    # each split mode and at each k, by query log-loss. "bayes": multipliers of the fitted prior
    # precision (1 = the fitted prior; below 1 widens it: seen users' states are themselves shrunk
    # estimates). "map": isotropic precisions. The population pin is reached through the gate.
    prior_scales: list[float] = dataclasses.field(
        default_factory=lambda: [0.001, 0.0056, 0.032, 0.18, 1.0, 5.6, 32.0, 180.0, 1000.0])
    # "map" only: the grid of isotropic prior precisions the scale is fitted on (as prior_scales).
    prior_strengths: list[float] = dataclasses.field(
        default_factory=lambda: [0.01, 0.042, 0.18, 0.75, 3.2, 13.0, 56.0, 240.0, 1000.0])
    # Personalize at a (mode, k) only where the calibration users show a log-loss gain over the
    # population prediction whose one-sided lower confidence bound (`gate_level`) lies above 0, and
    # no accuracy loss; false: personalize at every k with the fitted scale.
    gate: bool = True
    # Where the scale is fitted: "per_k" = on each k's own calibration users; "pooled" = one scale
    # per mode, on every k's users pooled; "evidence" = the pooled one, and a k's own only where
    # it beats the pooled one on cross-fitted log-loss (one-sided lower bound above 0 at `gate_level`).
    # On a sparse panel a large k that a few dozen users reach picks its own scale by noise.
    scale_by_k: str = "per_k"
    gate_level: float = 0.95  # confidence of the gate's one-sided bounds (paired bootstrap over calibration users)
    gate_min_users: int = 20  # fewer calibration users reaching a k: no decision there (the nearest k below applies)
    # Accuracy, besides the log-loss evidence: by default the gate opens only where the calibration
    # users' accuracy gain is not negative on average. A number m also asks its one-sided
    # `gate_level` lower bound to rule out a loss larger than m (a non-inferiority test: ruling out 0.3 points
    # takes some 10⁴ query pairs, so on a sparse panel it keeps the population at every k).
    gate_accuracy_margin: float | None = None
    # At most this many seen users calibrate (a fixed random subset; all unseen-val users do too):
    # hundreds decide the scale and the gate as well as thousands, at a fraction of the time.
    calibration_seen_users: int = 400
    # Where a seen calibration user's support comes from (the query is always their held-out
    # pairs): "training" = their training pairs, so hundreds of users reach every k (θ has seen
    # that support: pluralign.evaluate.shrinkage says what that does); "held_out" = their held-out
    # pairs too, never trained on, but on a sparse panel they stop at k = 1 or 2; "auto" =
    # "held_out" for a model whose inference is an encoder trained on those very training pairs
    # (VPL: there training support was optimistic, measured on rail), "training" for the others.
    calibration_support: str = "auto"
    # "bayes", models whose state has a residual block (lore with residual_dim > 0): that block's
    # prior variance relative to the rest, ρ. null = fitted per split mode on the calibration users
    # (factors of 4 from 1, pluralign.evaluate.shrinkage.search_ratio); a number fixes it (1 = the
    # seen states' scatter as it is). The others ignore it.
    residual_ratio: float | None = None
    inference_steps: int = 100  # optimiser steps of few-shot MAP inference (PAL, DPA, GPM); VPL is amortised
    inference_learning_rate: float = 0.1  # learning rate of few-shot MAP inference
    split_seed: int = 0  # user split and seen-pair split; fixed across training seeds
    unseen_val_fraction: float = 0.1  # users held out for model selection (sweeps) and as calibration users
    unseen_test_fraction: float = 0.2  # users held out for the reported unseen-user figures only
    pair_val_fraction: float = 0.1  # seen users' pairs for early stopping
    pair_test_fraction: float = 0.1  # seen users' held-out pairs for the seen-user figures

    def __post_init__(self):
        # Fail at start-up, not after training.
        if not self.shots or any(int(k) < 1 for k in self.shots):
            raise ValueError(f"eval.shots must be positive integers, got {self.shots}")
        unknown = set(self.modes) - {"random", "item_disjoint"}
        if not self.modes or unknown:
            raise ValueError(f"eval.modes must be a non-empty subset of [random, item_disjoint], got {self.modes}")
        if self.draws < 1:
            raise ValueError(f"eval.draws must be >= 1, got {self.draws}")
        if self.inference not in ("bayes", "map"):
            raise ValueError(f"eval.inference must be 'bayes' or 'map', got {self.inference!r}")
        if self.scale_by_k not in ("evidence", "per_k", "pooled"):
            raise ValueError(f"eval.scale_by_k must be 'evidence', 'per_k' or 'pooled', got {self.scale_by_k!r}")
        if self.calibration_support not in ("auto", "held_out", "training"):
            raise ValueError(f"eval.calibration_support must be 'auto', 'held_out' or 'training', "
                             f"got {self.calibration_support!r}")
        if self.residual_ratio is not None and not self.residual_ratio > 0:
            raise ValueError(f"eval.residual_ratio must be null (fitted) or > 0, got {self.residual_ratio}")
        if self.calibration_seen_users < 0:
            raise ValueError(f"eval.calibration_seen_users must be >= 0, got {self.calibration_seen_users}")
        margin = self.gate_accuracy_margin
        if not 0.5 <= self.gate_level < 1 or self.gate_min_users < 1 or not (margin is None or 0 <= margin < 1):
            raise ValueError(f"eval.gate_level must be in [0.5, 1), eval.gate_min_users >= 1 and eval.gate_accuracy_margin "
                             f"null or in [0, 1), got {self.gate_level}, {self.gate_min_users}, {self.gate_accuracy_margin}")
        if not self.prior_scales or any(s <= 0 for s in self.prior_scales):
            raise ValueError(f"eval.prior_scales must be a non-empty list of values > 0, got {self.prior_scales}")
        if not self.prior_strengths or any(s <= 0 for s in self.prior_strengths):
            raise ValueError(f"eval.prior_strengths must be a non-empty list of values > 0, got {self.prior_strengths}")


@dataclasses.dataclass(frozen=True)
class Episodes:
    """Each user's support pool and query set, as comparison rows."""

    users: np.ndarray  # [U]
    pool: np.ndarray  # [U, P] the support pool (up to max_shots), -1 = none; its first k rows are the k-shot support
    query: np.ndarray  # [U, Q] comparison rows, -1 = none
    pool_size: np.ndarray  # [U]


def without_copies(comparisons: Comparisons, pool: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The pool rows less any copy of a query comparison (same user, prompt and item pair)."""
    keys = comparison_keys(comparisons, np.concatenate([query, pool]))
    return pool[~np.isin(keys[len(query):], keys[: len(query)])]


def random_split(comparisons: Comparisons, rows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`random` mode for one user's rows: (pool, query); no copy of a query comparison in the pool."""
    rows = rng.permutation(rows)
    n_query = max(1, (len(rows) + 1) // 2)
    query, pool = rows[:n_query], rows[n_query:]
    return without_copies(comparisons, pool, query), query


def item_halves_split(comparisons: Comparisons, pool_rows: np.ndarray, query_rows: np.ndarray,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The user's items (over both row sets) in two random halves; (the `pool_rows` within the
    first half, the `query_rows` within the second), each in random order."""
    rows = np.concatenate([pool_rows, query_rows])
    items = rng.permutation(np.union1d(comparisons.a[rows], comparisons.b[rows]))
    support_items = items[: len(items) // 2]
    inside = lambda r: np.isin(comparisons.a[r], support_items) & np.isin(comparisons.b[r], support_items)  # noqa: E731
    outside = lambda r: ~np.isin(comparisons.a[r], support_items) & ~np.isin(comparisons.b[r], support_items)  # noqa: E731
    return rng.permutation(pool_rows[inside(pool_rows)]), rng.permutation(query_rows[outside(query_rows)])


def item_split(comparisons: Comparisons, rows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`item_disjoint` mode for one user's rows: the user's items in two random halves; (pool
    within the first half, query within the second), each in random order."""
    return item_halves_split(comparisons, rows, rows, rng)


def check_mode(mode: str) -> None:
    if mode not in ("random", "item_disjoint"):
        raise ValueError(f"unknown few-shot mode {mode!r}; use 'random' or 'item_disjoint'")


def make_episodes(comparisons: Comparisons, users: np.ndarray, *, max_shots: int, mode: str, seed: int) -> Episodes:
    check_mode(mode)
    split = random_split if mode == "random" else item_split
    rng = np.random.default_rng(seed)
    order, offsets = rows_by_user(comparisons, users)
    splits = [split(comparisons, order[offsets[i] : offsets[i + 1]], rng) for i in range(len(users))]
    return episodes_from(users, [pool for pool, _ in splits], [query for _, query in splits], max_shots)


def episodes_from(users: np.ndarray, pools: list[np.ndarray], queries: list[np.ndarray], max_shots: int) -> Episodes:
    """Episodes from each user's (pool, query) rows: the pool cut to its first `max_shots`, both
    padded with -1."""
    pools = [pool[:max_shots] for pool in pools]
    return Episodes(
        users=np.asarray(users),
        pool=_pad(pools, max_shots),
        query=_pad(queries, max((len(q) for q in queries), default=1)),
        pool_size=np.array([len(p) for p in pools]),
    )


def _pad(rows: list[np.ndarray], width: int) -> np.ndarray:
    out = np.full((len(rows), max(width, 1)), -1, np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def user_pair_features(model, tables, batch):
    """Pair features for a [U, n] batch (n comparisons of each of U users), computed as one flat [U·n] batch."""
    flat = jax.tree.map(lambda x: x.reshape(-1), batch)
    feats = model.pair_features(base.gather(tables, flat))
    return jax.tree.map(lambda f: f.reshape(*batch.label.shape, *f.shape[1:]), feats)


def make_adapt_and_predict(graphdef: nnx.GraphDef, steps: int, learning_rate: float, inference: str = "map"):
    """Returns a jitted fn: (params, tables, pool, n_shots, query, strength, seen_users[, residual_ratio])
    -> (states [U, S], query logits [U, Q]).

    `inference="map"`: MAP states under an isotropic prior of precision `strength` around the
    average of `seen_users`' states; the logits are the MAP state's. `inference="bayes"` (models
    with `fits_user_state`; the others fall back to their own `infer_user`): the prior is fitted
    to `seen_users`' states (`base.empirical_prior`), `strength` multiplies its precision, the
    states are Laplace posterior means and the logits are posterior-predictive
    (σ(logit) = P(a ≻ b | support)), so a user the support says little about gets cautious odds
    (a model whose population prediction is a marginal fit, `population_is_marginal`, gives it
    exactly at 0 answers);
    `residual_ratio` rescales the prior's `residual_block` (`base.empirical_prior`; 1 = as fitted).

    One (n_shots, strength) per call: `predict_users` loops over the settings it needs. A [P] axis
    of settings inside one program (tried: a lax.map over them) saves only the pair features' work
    and costs a compile per P (~2 s on CPU); a vmap over them gave wrong logits for settings past
    the 4th on XLA:CPU (PAL-B, 128 users; measured 2026-12-04).
    """
    if inference not in ("bayes", "map"):
        raise ValueError(f"unknown few-shot inference {inference!r}; use 'bayes' or 'map'")

    @jax.jit
    def adapt_and_predict(params, tables, pool: base.PairBatch, n_shots, query: base.PairBatch, strength, seen_users,
                          residual_ratio=1.0):
        model = nnx.merge(graphdef, params)
        support_feats = user_pair_features(model, tables, pool)
        query_feats = user_pair_features(model, tables, query)

        def one(n_shots, strength):
            # The first n_shots pool pairs are the support; the rest of the pool is masked out.
            shot_mask = (jnp.arange(pool.label.shape[1])[None, :] < n_shots).astype(pool.weight.dtype)
            fit = lambda: base.infer_user_posterior(  # noqa: E731
                model, support_feats, pool.label, pool.weight * shot_mask, inference=inference, seen_users=seen_users,
                strength=strength, steps=steps, learning_rate=learning_rate, residual_ratio=residual_ratio,
            )  # [U, S], [U, S, S] or None
            if inference == "bayes" and model.fits_user_state:  # no answers: the posterior is the prior, no fit to run
                states, covs = jax.lax.cond(n_shots > 0, fit, lambda: base.prior_posterior(
                    model, seen_users, strength, pool.label.shape[0], residual_ratio))
            else:
                states, covs = fit()
            predictive = lambda: base.posterior_logits(model, states, covs, query_feats)  # noqa: E731
            if inference == "bayes" and model.fits_user_state and model.population_is_marginal:
                # No answers: the population model's own prediction, the point state's logits. BT's
                # σ(r) is already the users' marginal; the prior predictive would temper it again by
                # their spread.
                logits = jax.lax.cond(n_shots > 0, predictive,
                                      lambda: base.posterior_logits(model, states, None, query_feats))
            else:
                logits = predictive()
            return base.point_states(model, states, covs), logits

        return one(n_shots, strength)

    return adapt_and_predict


def evaluate_unseen(
    adapt_and_predict,
    params,
    tables: base.Tables,
    comparisons: Comparisons,
    users: np.ndarray,
    *,
    shots: list[int],
    mode: str,
    seeds: list[int],
    draws: int,
    prior_strength: float | dict[int, float],
    seen_users: np.ndarray,
    personalize: dict[int, bool] | None = None,
    min_user_fraction: float = 0.5,
    user_group: np.ndarray | None = None,
    residual_ratio: float = 1.0,
    scored: tuple[list, list[int]] | None = None,
) -> dict:
    """k-shot metrics on unseen users for every seed (params carry a leading seed axis) and draw.

    `prior_strength`: one setting for every k, or {k: setting} (`strength_at` picks a k's).
    `personalize`: the gate's {k: decision} (`pluralign.evaluate.shrinkage`; the entry at the
    largest k' ≤ k applies, the population below all of them); where it is off a user gets the
    population prediction (the 0-shot one: the same model and prior without the answers). None:
    personalize at every k. `residual_ratio`: the mode's fitted ρ (`base.empirical_prior`).
    `scored`: `scored_episodes` of these users under the same arguments, where the caller has it
    already (`pluralign.run.evaluate_unseen_users` decides the shrinkage at its k's first).

    Returns {k: entry} for every requested k, and for the largest k that enough users reach
    when the largest requested one is out of reach (`largest_available: true`). An entry with
    `accuracy: None` carries its `reason`; otherwise: accuracy (mean over the seed×draw
    episodes), accuracy_std (std over them; None for a single episode), n_episodes, log_loss,
    ece, per_user_mean, per_user_p10, n_users and n_query_pairs (scored per episode, mean),
    n_users_total, ci95 (bootstrap over users of the pooled accuracy), vs_zero_shot (paired
    difference to the same model's 0-shot prediction on the same queries, with its interval),
    per_user (pooled sums per user, see `metrics.per_user_sums`), episodes (a fingerprint of
    the episodes: runs with equal fingerprints scored the same users on the same queries)
    [, worst_group_accuracy].
    """
    if len(users) == 0:
        return {}
    users = np.asarray(users)
    ids = np.sort(users)
    episodes, ks = scored if scored is not None else scored_episodes(
        comparisons, users, shots=shots, mode=mode, seeds=seeds, draws=draws, min_user_fraction=min_user_fraction)

    runs: dict[int, list[dict]] = {k: [] for k in ks}
    sums = {k: [] for k in ks}  # per-user sums of each episode: (k-shot, 0-shot)
    fingerprint = {k: hashlib.sha1() for k in ks}
    for seed_index, ep in episodes:
        seed_params = jax.tree.map(lambda x: x[seed_index], params)
        query = padded_batch(comparisons, ep.query)
        label, user, weight = (np.asarray(x) for x in (query.label, query.user, query.weight))
        for k in ks:
            if not _reached(ep, k, min_user_fraction):
                continue
            # The users who reach k, from k answers and from none (the population prediction: the
            # same model and prior without the answers), in one call; the others are not scored.
            reach = _eligible(ep, k)
            strength, rows = strength_at(prior_strength, k), np.flatnonzero(reach)
            zero_shot, logits = np.zeros((2, *label.shape), np.float32)
            zero_shot[rows], logits[rows] = predict_users(adapt_and_predict, seed_params, tables, comparisons, ep, rows,
                                                          [(0, strength), (k, strength)], seen_users, residual_ratio)
            if not gate_at(personalize, k):
                logits = zero_shot
            w = weight * reach[:, None]
            runs[k].append(metrics.summary(logits.ravel(), label.ravel(), w.ravel(), user.ravel(), user_group))
            sums[k].append(tuple(metrics.per_user_sums(z.ravel(), label.ravel(), w.ravel(), user.ravel(), ids)
                                 for z in (logits, zero_shot)))
            for rows in (ep.users[reach], ep.query[reach], ep.pool[reach, :k]):
                fingerprint[k].update(np.ascontiguousarray(rows, np.int64).tobytes())
    return {
        k: shot_entry(runs[k], sums[k], ids, fingerprint[k].hexdigest(), largest_available=k not in shots)
        if runs[k] else {"accuracy": None, "n_users": 0, "n_users_total": len(users),
                         "reason": unreached_reason(k, [ep for _, ep in episodes], min_user_fraction)}
        for k in ks
    }


def _eligible(episodes: Episodes, k: int) -> np.ndarray:
    """Which of the episodes' users reach k: k support pairs and a query."""
    return (episodes.pool_size >= k) & (episodes.query >= 0).any(axis=1)


def _reached(episodes: Episodes, k: int, min_user_fraction: float) -> bool:
    """Whether the episodes score k: at least `min_user_fraction` of their users (and one) reach it."""
    reach = _eligible(episodes, k)
    return bool(reach.any() and reach.mean() >= min_user_fraction)


def scored_episodes(comparisons: Comparisons, users: np.ndarray, *, shots: list[int], mode: str, seeds: list[int],
                    draws: int, min_user_fraction: float = 0.5) -> tuple[list[tuple[int, Episodes]], list[int]]:
    """The (seed index, episodes) `evaluate_unseen` scores `users` on (they depend only on the data,
    the users, the seed and the draw), and the k's it scores: `shots`, plus the largest k that at
    least `min_user_fraction` of the users reach when the largest requested one is out of reach
    (a sparse panel: rail's unseen-test users reach k = 7 of 9). The shrinkage is decided at these
    k's (`pluralign.run.evaluate_unseen_users`): a k scored without a decision of its own would
    get the one at the k below."""
    max_shots = max(shots)
    episodes = []
    for seed_index, seed in enumerate(seeds):
        for draw in range(draws):
            episode_seed = int(np.random.SeedSequence([seed, draw]).generate_state(1)[0])
            episodes.append((seed_index, make_episodes(comparisons, users, max_shots=max_shots, mode=mode, seed=episode_seed)))
    ks = list(shots)
    largest = largest_reachable_k(episodes, max_shots, min_user_fraction)
    if largest and largest not in ks and not any(_reached(ep, max_shots, min_user_fraction) for _, ep in episodes):
        ks.append(largest)
    return episodes, ks


def predict_many(adapt_and_predict, params, tables, pool, query, needed: list[tuple[int, float]], seen_users,
                 residual_ratio: float = 1.0) -> np.ndarray:
    """[P, U, Q] query logits of one batch of users from (n_shots, setting) pairs, one call each."""
    ratio = jnp.float32(residual_ratio)
    return np.stack([np.asarray(adapt_and_predict(params, tables, pool, jnp.int32(k), query, jnp.float32(s), seen_users,
                                                  ratio)[1]) for k, s in needed])


CHUNK_USERS = 128  # users per few-shot call: one compiled size, whatever the number of users


def _compiled_width(n: int, factor: int, smallest: int = 8) -> int:
    """The smallest smallest·factor^j ≥ n: a width a few-shot call is compiled for."""
    width = smallest
    while width < n:
        width *= factor
    return width


def _width(n_shots: int) -> int:
    """The support width a k-shot call is compiled for: the power of 4 ≥ k, at least 16 (16, 64,
    256, ...), so a run compiles one program per quadrupling of k while a k-shot fit pays for fewer
    than 4k support pairs (16 below k = 4). Each width is one more program, ~1.5-2.5 s to compile
    on CPU: with PAL's fit at a few ms per call (`PreferenceModel.user_logits`), the main job's
    k = 1…50 on powers of 2 (8, 16, 32, 64) spent more compiling its four programs than running
    them; on these two (16, 64) its cold evaluation takes ~3-5 s less and its warm one the same.
    0 and 1 answers share the narrowest program: 0 answers run no fit at all."""
    return _compiled_width(n_shots, 4, smallest=16)


QUERY_BLOCK = 512  # the widest query one few-shot call scores; a longer one is scored in blocks of it


def _query_width(n_query: int) -> int:
    """The query width a call is compiled for: the power of 8 ≥ n_query, at least 8, at most
    `QUERY_BLOCK` (a longer query is scored in blocks of that width, `predict_users`). Coarser than
    the support's: calibration and scoring episodes hold different numbers of query pairs, and each
    width is one more program per support width (~1 s each to compile), for little work (the query
    pairs are scored once, the support pairs at every optimiser step). The bound keeps a call's
    memory at CHUNK_USERS × 512 query pairs whatever the data: a dense rating set whose users hold
    600 query pairs each would otherwise be padded to 4,096 (7× the features, [U, Q, 2, d] of them)."""
    return _compiled_width(min(n_query, QUERY_BLOCK), 8)


def predict_users(adapt_and_predict, params, tables, comparisons: Comparisons, episodes: Episodes, rows: np.ndarray,
                  needed: list[tuple[int, float]], seen_users, residual_ratio: float = 1.0) -> np.ndarray:
    """[P, len(rows), Q] query logits of the episodes' users `rows` from each (n_shots, setting) of
    `needed` (under `residual_ratio`, `make_adapt_and_predict`): one call per `CHUNK_USERS` users,
    each with only the pool's first max(n_shots) pairs (the support; the rest would be masked out). A k-shot prediction thus costs k support
    pairs (rounded up to `_width`) per user who reaches k, not the pool's width for every user,
    and the calls share a few compiled shapes. A query longer than `QUERY_BLOCK` pairs is scored
    in blocks of it, each with the same support (the fit is repeated; memory stays bounded)."""
    zero = [i for i, (k, _) in enumerate(needed) if k == 0]
    if zero and len(zero) < len(needed):  # 0-shot predictions need no support: the narrowest call
        some = [i for i in range(len(needed)) if i not in zero]
        out = np.zeros((len(needed), len(rows), episodes.query.shape[1]), np.float32)
        for part in (zero, some):
            out[part] = predict_users(adapt_and_predict, params, tables, comparisons, episodes, rows,
                                      [needed[i] for i in part], seen_users, residual_ratio)
        return out
    width, n_query = _width(max(k for k, _ in needed)), episodes.query.shape[1]
    out = np.zeros((len(needed), len(rows), n_query), np.float32)
    for start in range(0, len(rows), CHUNK_USERS):
        chunk = rows[start : start + CHUNK_USERS]
        pool = np.full((CHUNK_USERS, width), -1, np.int64)
        cut = episodes.pool[chunk, :width]
        pool[: len(chunk), : cut.shape[1]] = cut
        support, block = padded_batch(comparisons, pool), _query_width(n_query)
        for first in range(0, n_query, block):
            part = episodes.query[chunk, first : first + block]
            query = np.full((CHUNK_USERS, block), -1, np.int64)
            query[: len(chunk), : part.shape[1]] = part
            z = predict_many(adapt_and_predict, params, tables, support, padded_batch(comparisons, query), needed,
                             seen_users, residual_ratio)
            out[:, start : start + len(chunk), first : first + part.shape[1]] = z[:, : len(chunk), : part.shape[1]]
    return out


def entry_at(by_k: dict, k: int):
    """The {k: value} entry at the largest k' ≤ k (keys may be ints or, read from JSON, strings);
    None below every key."""
    below = [kk for kk in by_k if int(kk) <= k]
    return by_k[max(below, key=int)] if below else None


def strength_at(prior_strength: float | dict[int, float], k: int) -> float:
    """The prior setting for k shots: the one setting, or the {k: setting} entry at the largest
    k' ≤ k (the smallest k' where k is below all of them)."""
    if not isinstance(prior_strength, dict):
        return float(prior_strength)
    value = entry_at(prior_strength, k)
    return float(prior_strength[min(prior_strength, key=int)] if value is None else value)


def gate_at(personalize: dict[int, bool] | None, k: int) -> bool:
    """Whether a user with k answers is personalized: the gate's entry at the largest k' ≤ k;
    False below every entry; True without a gate (None)."""
    return True if personalize is None else bool(entry_at(personalize, k))


def largest_reachable_k(episodes: list, max_shots: int, min_user_fraction: float) -> int:
    """The largest k ≤ max_shots that at least `min_user_fraction` of the users (and one) reach
    in some episode: they have k support pairs and a query."""
    best = 0
    for _, ep in episodes:
        pool = np.sort(np.where((ep.query >= 0).any(axis=1), np.minimum(ep.pool_size, max_shots), 0))[::-1]
        need = max(1, int(np.ceil(min_user_fraction * len(pool) - 1e-9)))
        if need <= len(pool):
            best = max(best, int(pool[need - 1]))
    return best


def unreached_reason(k: int, episodes: list, min_user_fraction: float) -> str:
    n_users = len(episodes[0].users)
    most = max(int(_eligible(ep, k).sum()) for ep in episodes)
    return (f"k={k}: at most {most} of {n_users} users have {k} support pairs and a query in an episode "
            f"(at least {min_user_fraction:.0%} and one needed)")


def shot_entry(runs: list[dict], sums: list[tuple[dict, dict]], ids: np.ndarray, fingerprint: str, *,
               largest_available: bool) -> dict:
    """One k's figures from its episodes' metric summaries and per-user sums (see evaluate_unseen)."""
    over = metrics.mean_over_runs(runs)
    pooled = {name: sum(s[0][name] for s in sums) for name in sums[0][0]}
    pooled_zero = {name: sum(s[1][name] for s in sums) for name in sums[0][1]}
    scored = (pooled["n"] > 0) | (pooled["weight"] > 0)
    low, high = metrics.bootstrap_ratio_interval(pooled["correct"], pooled["n"])
    gain_low, gain_high = metrics.bootstrap_ratio_interval(pooled["correct"] - pooled_zero["correct"], pooled["n"])
    n = max(pooled["n"].sum(), 1e-12)
    entry = {
        "accuracy": over["accuracy"],
        "accuracy_std": over["accuracy_std"] if len(runs) > 1 else None,
        "n_episodes": len(runs),
        **{name: over[name] for name in ("log_loss", "ece", "per_user_mean", "per_user_p10")},
        "n_users": int(round(np.mean([r["per_user"]["n_users"] for r in runs]))),
        "n_query_pairs": int(round(np.mean([r["n_pairs"] for r in runs]))),
        "n_users_total": len(ids),
        "ci95": [low, high],
        "vs_zero_shot": {"difference": float((pooled["correct"] - pooled_zero["correct"]).sum() / n),
                         "ci95": [gain_low, gain_high]},
        "per_user": {"user": ids[scored].tolist(),
                     **{name: np.round(v[scored], 6).tolist() for name, v in pooled.items()}},
        "episodes": fingerprint,
    }
    if largest_available:
        entry["largest_available"] = True
    if "worst_group_accuracy" in over:
        entry["worst_group_accuracy"] = over["worst_group_accuracy"]
    return entry
