"""How far to trust a new user's answers, decided from enough evidence (docs/design/evaluation-protocol.md).

A personalized model's few-shot inference has one free setting, the prior's scale: a multiplier
c of the fitted prior precision (`eval.inference=bayes`) or an isotropic precision (`map`). Too
weak a prior and one answer throws a user far from the population; too strong and twenty answers
change nothing. And at some (split mode, k) personalizing does not pay at all: on dense rating
data the support's items say nothing about the query's in `item_disjoint` mode when users differ
only in idiosyncratic item effects. Choosing either on ~25 unseen-val users from five grid values
is noise (measured on held-back real text data: 3.8 points below BT, the choice on the grid's
edge). Here both are decided on hundreds of users:

**Calibration users.** Every seen user (up to `eval.calibration_seen_users`), plus the unseen-val
users. Each is treated as a new user: episodes are drawn in the evaluation's own split mode, the
state is inferred from k support pairs by the evaluation's own inference (θ frozen, the user's
learned state ignored), and the query pairs are scored. A seen user's query is always their
*held-out* comparisons (the seen-pair validation and test rows: never trained on); their support
(`eval.calibration_support`, `auto`) is their *training* comparisons for every model that fits a
user's state (`training_support_episodes`;
item split: support and query on disjoint halves of the user's items), so that hundreds of users
reach every k. With `held_out` the support comes from the held-out rows too (`make_episodes` on
them): nothing θ was trained on, but a seen user holds out ~20 % of their pairs, so on a sparse
panel (rail: 5-19 choices) their episodes stop at k = 1 or 2 and every larger k is decided on a
few dozen unseen-val users, that is, by noise. θ has seen a training support, and that cuts both
ways: the shared reward already fits those pairs (less left to learn from them: a pessimistic
bias), and a learned basis such as lore's B may have co-adapted to them (optimistic). Measured
(2026-12-04, 3 seeds): the two agree where both reach k (shared_plus_low_rank, Swissmetro:
fitted scales within ~10 %, gains within 0.003); on rail the training-support gains (+0.010,
+0.019, +0.038 at k = 2, 4, 6) were *below* the unseen-test users' (+0.013, +0.033, +0.056); on
`idiosyncratic` item split, where there is nothing to gain, both keep the gate shut. Unseen-val
users' episodes use all their rows. The users are dealt out to the training seeds (each scored
under one seed's parameters), so the cost does not grow with the number of seeds.

**The scale** (per mode, and per k where the evidence says so): each calibration user's query
log-loss on a log-spaced grid of settings (`eval.prior_scales` / `eval.prior_strengths`, wide:
10⁻³…10³ by default), the mean log-loss minimised continuously (a parabola in log c through the
best grid point and its neighbours; the grid is walked downhill from its middle and scored only
where the walk looks, `local_minimum`, `LazyCurves`); the figures there are interpolated in log c between the
grid's (the reported unseen users are scored exactly at it). The mean pools every
k's users (one scale per mode, hundreds of users); a k keeps its own fit only where that fit,
cross-fitted, beats the pooled one on its users with a one-sided lower bound above 0
(`eval.scale_by_k=evidence`; `per_k` and `pooled` are the two limits): a large k that a few
dozen users reach would otherwise choose by noise. The population pin (c → ∞) is the other limit,
reached through the gate.

**The gate** (per mode and k, smallest k first): personalize only where the calibration users show a gain in
log-loss over the population prediction (the same model and prior with no answers: its 0-shot
prediction; for a population-anchored model with its BT population stage that is BT's own
prediction, exactly: `base.PreferenceModel.population_is_marginal`) whose one-sided lower
confidence bound (paired bootstrap over users, `eval.gate_level` = 95 %) lies above zero, and no
loss in accuracy on average (a sharper
posterior that flips close calls can lower log-loss and accuracy together, so log-loss alone is
not enough for "never worse than the population"). Accuracy is asked for its point estimate, not
an interval: a paired accuracy difference is carried by the few query pairs whose prediction
flips, so ruling out even a 0.3-point loss at 95 % takes ~(1.96·0.3/0.003)² ≈ 4·10⁴ query pairs
when a tenth of them flip, while a sparse panel's calibration users hold a few hundred (rail:
555 at k = 1, accuracy intervals ±1–5 points, where such a test kept the population at every k
and gave up +4 points at k ≥ 6). `eval.gate_accuracy_margin` = m adds that test for those who
want it. The bound is one-sided because the question is: is there a gain? (Until 2026-12-05 it
was the lower end of a two-sided 95 % interval, a one-sided 97.5 % test. Re-evaluating the same
trained runs under both, 4 models × 4 data sets × 3 seeds, changed one case: VPL on rail with
training support, whose calibration gain at k = 4, +0.023 [−0.002, +0.049], opened the gate. That
support turned out optimistic for VPL on other user splits (`pluralign.run.calibration_support`):
VPL now calibrates on held-out support and keeps BT on rail. Every cell where personalizing
lowered accuracy stayed at the population under both rules.) The gain is *cross-fitted*:
the users are split in two folds and each fold is scored at the scale fitted on the other, so the
setting is never judged on the users it was fitted to. Once the gate has opened at some k it stays
open at larger k unless the users there show a loss, in log-loss or in accuracy (a one-sided
upper bound below 0): fewer users reach a larger k, so its own interval is wider, while a posterior
predictive with a calibrated prior does not get worse in expectation as answers accumulate. Where fewer than `eval.gate_min_users`
users reach k, no decision is made there and the nearest decided k below applies
(`fewshot.strength_at`, `fewshot.gate_at`); below every decided k a new user gets the population.
The ks decided are those the unseen users are scored at (`pluralign.run.unseen_episodes`): a k
added because the largest asked for is out of their reach gets a decision of its own.

Unseen-val users then only confirm, and unseen-test users are scored with these decisions.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import numpy as np

from pluralign.data.format import Comparisons
from pluralign.data.splits import rows_by_user
from pluralign.evaluate import metrics
from pluralign.evaluate.fewshot import (CHUNK_USERS, Episodes, check_mode, episodes_from, item_halves_split, make_episodes,
                                        predict_users, without_copies)
from pluralign.models import base
from pluralign.train.batches import padded_batch

@dataclasses.dataclass(frozen=True)
class Decision:
    """One (split mode, k) decision and its evidence (results.json `unseen.shrinkage`)."""

    k: int
    prior_scale: float  # the fitted setting (a precision multiplier under bayes, a precision under map)
    personalize: bool  # the gate: False = the population prediction at this k
    n_users: dict  # calibration users who reached k: {"seen": ..., "unseen_val": ...}
    n_query_pairs: int  # their scored query pairs, pooled over seeds
    log_loss: dict  # mean query log-loss {"population": ..., "personalized": ...} at prior_scale
    accuracy: dict  # the same for accuracy
    gain_log_loss: float  # cross-fitted population − personalized mean log-loss
    gain_log_loss_ci95: list  # its paired bootstrap interval over users (two-sided, REPORT_LEVEL)
    gain_accuracy: float  # cross-fitted personalized − population accuracy
    grid: list  # the settings scored
    grid_log_loss: list  # pooled mean log-loss at each (None: not scored, far from the minimum; `local_minimum`)
    reason: str  # the decision in words
    scale_from: str = "this k"  # "this k" (its own users' fit) or "pooled over k" (eval.scale_by_k)
    pooled_scale: float | None = None  # the mode's scale fitted on every k's calibration users
    gain_accuracy_ci95: list | None = None  # the accuracy gain's paired bootstrap interval over users
    gain_log_loss_lower: float | None = None  # the gain's one-sided lower confidence bound at gate_level: the gate's test
    gate_level: float = 0.95  # eval.gate_level: the confidence of that bound
    residual_ratio: float = 1.0  # the mode's ρ: the prior's residual-block variance multiplier (base.empirical_prior)
    residual_ratio_log_loss: dict | None = None  # {ρ: pooled mean query log-loss at its fitted scale}: the search

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def grid(model: base.PreferenceModel, inference: str, prior_scales, prior_strengths) -> list[float]:
    """The settings to score: the bayes multipliers or the map precisions; one value where the
    model's inference ignores the setting, since only the gate is left. VPL's amortised posterior
    gets the multipliers under bayes (its prior N(0, I) has precision 1, so a multiplier and a
    precision are the same number: `vpl.rescaled_prior`)."""
    if not model.uses_prior_strength:
        return [1.0]  # a placeholder the inference never reads
    scales = inference == "bayes" and (model.fits_user_state or model.has_latent_posterior)
    return list(prior_scales if scales else prior_strengths)


# --- calibration episodes ------------------------------------------------------------------


def calibration_users(comparisons: Comparisons, held_out_rows: np.ndarray, *, max_seen: int | None,
                      seed: int = 0) -> np.ndarray:
    """The seen users with held-out rows (at most `max_seen` of them, a fixed random subset)."""
    seen = np.unique(comparisons.user[np.asarray(held_out_rows, np.int64)])
    if max_seen is not None and len(seen) > max_seen:
        seen = np.sort(np.random.default_rng(seed).choice(seen, max_seen, replace=False))
    return seen


def training_support_episodes(comparisons: Comparisons, train_rows: np.ndarray, held_out_rows: np.ndarray,
                              users: np.ndarray, *, max_shots: int, mode: str, seed: int) -> Episodes:
    """Seen users' episodes whose support pool is drawn from their *training* rows and whose query
    is their held-out rows (`eval.calibration_support=training`). `random`: the pool is the
    training rows in random order (less any copy of a query comparison), the query every held-out
    row; `item_disjoint`: the user's items (over both) in two random halves, the pool the training
    rows within the first, the query the held-out rows within the second. Rows index `comparisons`."""
    check_mode(mode)
    rng = np.random.default_rng(seed)
    by_user = []
    for rows in (np.asarray(train_rows, np.int64), np.asarray(held_out_rows, np.int64)):
        order, offsets = rows_by_user(comparisons.take(rows), users)
        by_user.append([rows[order[offsets[i] : offsets[i + 1]]] for i in range(len(users))])
    pools, queries = [], []
    for train, held_out in zip(*by_user):
        if mode == "random":
            query, pool = rng.permutation(held_out), rng.permutation(train)
            pool = without_copies(comparisons, pool, query)
        else:
            pool, query = item_halves_split(comparisons, train, held_out, rng)
        pools.append(pool)
        queries.append(query)
    return episodes_from(users, pools, queries, max_shots)


def calibration_episodes(comparisons: Comparisons, held_out_rows: np.ndarray, val_users: np.ndarray, *,
                         max_shots: int, mode: str, seed: int, seen_users: np.ndarray | None = None,
                         train_rows: np.ndarray | None = None) -> tuple[Episodes, np.ndarray]:
    """Episodes of the calibration users in `mode`: seen users' episodes drawn from their held-out
    rows only (those of `seen_users` where given), or, with `train_rows`, their support from their
    training rows and their query from their held-out rows (`training_support_episodes`);
    unseen-val users' from all their rows; rows index `comparisons`. Returns (episodes, [U] bool:
    the user is a seen one)."""
    held_out_rows = np.asarray(held_out_rows, np.int64)
    if seen_users is not None:
        held_out_rows = held_out_rows[np.isin(comparisons.user[held_out_rows], seen_users)]
    parts, flags = [], []
    if len(held_out_rows) and train_rows is not None:
        users = np.unique(comparisons.user[held_out_rows])
        parts.append(training_support_episodes(comparisons, train_rows, held_out_rows, users, max_shots=max_shots,
                                               mode=mode, seed=seed))
        flags.append(np.ones(len(users), bool))
    elif len(held_out_rows):
        subset = comparisons.take(held_out_rows)
        seen = make_episodes(subset, np.unique(subset.user), max_shots=max_shots, mode=mode, seed=seed)
        to_rows = lambda r: np.where(r >= 0, held_out_rows[np.maximum(r, 0)], -1)  # noqa: E731
        parts.append(dataclasses.replace(seen, pool=to_rows(seen.pool), query=to_rows(seen.query)))
        flags.append(np.ones(len(seen.users), bool))
    if len(val_users):
        parts.append(make_episodes(comparisons, np.asarray(val_users), max_shots=max_shots, mode=mode, seed=seed + 1))
        flags.append(np.zeros(len(val_users), bool))
    width = lambda name: max(getattr(p, name).shape[1] for p in parts)  # noqa: E731
    pad = lambda name: np.concatenate([np.pad(getattr(p, name), ((0, 0), (0, width(name) - getattr(p, name).shape[1])),  # noqa: E731
                                              constant_values=-1) for p in parts])
    episodes = Episodes(users=np.concatenate([p.users for p in parts]), pool=pad("pool"), query=pad("query"),
                        pool_size=np.concatenate([p.pool_size for p in parts]))
    return episodes, np.concatenate(flags)


# --- scoring: per-user sums on the grid -----------------------------------------------------


@dataclasses.dataclass
class Scores:
    """Per-user sums of one (mode, k) (`metrics.per_user_sums`): each grid setting's k-shot
    predictions and its 0-shot (population) predictions, the same model and prior without the answers."""

    ids: np.ndarray  # [U] calibration users, sorted
    is_seen: np.ndarray  # [U] bool
    population: Sequence  # [G] per_user_sums of the 0-shot prediction at each grid setting
    on_grid: Sequence  # [G] per_user_sums of the k-shot prediction at each grid setting (a list or `LazyCurves`)


class LazyCurves(Sequence):
    """[G] per-user sums, one per grid setting, each computed on first use and kept: the fits walk
    the grid from its middle (`local_minimum`), so the settings far from the minimum (typically
    five of the nine) are never scored."""

    def __init__(self, n: int, compute):
        self._n, self._compute, self._known = n, compute, {}

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, g: int) -> dict:
        if not 0 <= g < self._n:
            raise IndexError(g)
        if g not in self._known:
            self._known[g] = self._compute(g)
        return self._known[g]

    def known(self, g: int) -> bool:
        return g in self._known


def _scored(curves: Sequence, g: int) -> bool:
    return not isinstance(curves, LazyCurves) or curves.known(g)


def _middle(curves: Sequence) -> dict:
    """The grid's middle entry: on a sorted grid where `local_minimum`'s walk starts, so reading
    it scores nothing the fit would not."""
    return curves[len(curves) // 2]


def _weight(curves: Sequence) -> np.ndarray:
    """[U] the query weight of the users the curves score (the same at every setting)."""
    return _middle(curves)["weight"]


def deal_to_seeds(n_users: int, n_seeds: int, chunk: int = CHUNK_USERS) -> np.ndarray:
    """[n_users] the training seed each calibration user is scored under: the users (in a fixed
    random order) cut into C = max(⌈n / chunk⌉, n_seeds) near-equal blocks, block c to seed
    c mod n_seeds. Few-shot calls take `chunk` users at a time, so a seed's users cost
    ⌈its users / chunk⌉ calls: dealt one by one, 450 users over 3 seeds are 3 × 150 = six
    128-user calls, in blocks they are four. Every seed scores some users while there are
    enough (n_users ≥ n_seeds)."""
    n_blocks = min(max(-(-n_users // chunk), n_seeds), max(n_users, 1))
    block = np.empty(n_users, np.int64)
    block[np.random.default_rng(0).permutation(n_users)] = np.arange(n_users) * n_blocks // max(n_users, 1)
    return block % n_seeds


class Calibration:
    """The calibration users' episodes in one split mode, as device batches, split across the
    training seeds: each user is scored under one seed's parameters (in blocks, `deal_to_seeds`), so the cost does
    not grow with the number of seeds, and the evidence is pooled over all of them."""

    def __init__(self, adapt_and_predict, params, tables, comparisons: Comparisons, *, held_out_rows, val_users,
                 seen_users, shots: list[int], mode: str, seeds: list[int], max_seen: int | None = None,
                 train_rows: np.ndarray | None = None):
        self.adapt, self.tables, self.seen_users = adapt_and_predict, tables, seen_users
        self.comparisons = comparisons
        seen = calibration_users(comparisons, held_out_rows, max_seen=max_seen)
        val_users = np.asarray(val_users)
        self.batches = []  # (that seed's parameters, episodes, label, user, weight, pool_size, has_query)
        self._logits = {}  # (ρ, n_shots, setting) -> [B] each batch's query logits
        ids, is_seen = [], []
        owner = deal_to_seeds(len(seen) + len(val_users), len(seeds))
        for seed_index, seed in enumerate(seeds):
            episode_seed = int(np.random.SeedSequence([seed, 7919]).generate_state(1)[0])
            mine_seen, mine_val = seen[owner[: len(seen)] == seed_index], val_users[owner[len(seen) :] == seed_index]
            if not len(mine_seen) and not len(mine_val):
                continue
            ep, flags = calibration_episodes(comparisons, held_out_rows, mine_val, max_shots=max(shots), mode=mode,
                                             seed=episode_seed, seen_users=mine_seen, train_rows=train_rows)
            query = padded_batch(comparisons, ep.query)
            label, user, weight = (np.asarray(x) for x in (query.label, query.user, query.weight))
            seed_params = jax.tree.map(lambda x: x[seed_index], params)  # sliced once, used at every k
            self.batches.append((seed_params, ep, label, user, weight, ep.pool_size, (ep.query >= 0).any(axis=1)))
            ids.append(ep.users)
            is_seen.append(flags)
        ids, is_seen = np.concatenate(ids), np.concatenate(is_seen)
        order = np.argsort(ids)
        self.ids, self.is_seen = ids[order], is_seen[order]

    def logits(self, b: int, n_shots: int, setting: float, ratio: float = 1.0) -> np.ndarray:
        """Query logits of batch b from `n_shots` answers at `setting`, the prior's residual block
        scaled by `ratio` (`base.empirical_prior`). Every batch is scored on first request: one
        `fewshot.predict_users` per batch (a call per 128 users) over the users who reach n_shots
        (every user with a query for 0); 0 for the others, outside every sum."""
        key = (float(ratio), int(n_shots), float(setting))
        if key not in self._logits:
            self._logits[key] = [self._predict(batch, *key) for batch in self.batches]
        return self._logits[key][b]

    def _predict(self, batch, ratio: float, k: int, setting: float) -> np.ndarray:
        seed_params, ep, label, _, _, pool_size, has_query = batch
        rows = np.flatnonzero(has_query & (pool_size >= k))
        z = np.zeros(label.shape, np.float32)
        if len(rows):
            z[rows] = predict_users(self.adapt, seed_params, self.tables, self.comparisons, ep, rows, [(k, setting)],
                                    self.seen_users, ratio)[0]
        return z

    def sums(self, k: int, setting: float, n_shots: int | None = None, ratio: float = 1.0) -> dict:
        """Per-user sums over the users who reach k, of predictions from `n_shots` (default k) answers at `setting`."""
        total = None
        for b, (_, _, label, user, weight, pool_size, has_query) in enumerate(self.batches):
            z = self.logits(b, k if n_shots is None else n_shots, setting, ratio)
            w = (weight * ((pool_size >= k) & has_query)[:, None]).ravel()
            total = _add(total, metrics.per_user_sums(z.ravel(), label.ravel(), w, user.ravel(), self.ids))
        return total

    def reaches(self, k: int) -> int:
        return int(sum(((pool_size >= k) & has_query).sum() for *_, pool_size, has_query in self.batches))

    def score_grid(self, k: int, settings: list[float], ratio: float = 1.0) -> Scores:
        """k's grid under residual ratio `ratio`, scored lazily (`LazyCurves`): a setting's users
        are predicted when a fit or the gate first looks at it."""
        return Scores(ids=self.ids, is_seen=self.is_seen,
                      population=LazyCurves(len(settings), lambda g: self.sums(k, settings[g], n_shots=0, ratio=ratio)),
                      on_grid=LazyCurves(len(settings), lambda g: self.sums(k, settings[g], ratio=ratio)))

    def pooled_log_loss(self, reached: list[int], settings: list[float], ratio: float = 1.0) -> float:
        """The mean query log-loss of every reached k's users pooled, at the scale fitted to them
        (`local_minimum`; interpolated in log c between the grid's): how well the prior under
        residual ratio `ratio` does when its scale is fitted. Scores the k-shot grid only."""
        curves = pooled_curves([self.score_grid(k, settings, ratio).on_grid for k in reached])
        users = np.flatnonzero(_weight(curves) > 0)
        at = _interpolated(curves, settings, _fit(settings, curves, users), "log_loss_sum")
        return _mean_log_loss({"log_loss_sum": at, "weight": _weight(curves)}, users)


def _add(a: dict | None, b: dict) -> dict:
    return dict(b) if a is None else {name: a[name] + b[name] for name in a}


# --- deciding -------------------------------------------------------------------------------


def _mean_log_loss(sums: dict, users: np.ndarray) -> float:
    return float(sums["log_loss_sum"][users].sum() / max(sums["weight"][users].sum(), 1e-12))


def refine_minimum(settings: list[float], losses: list[float]) -> float:
    """The minimiser of a loss curve over log-spaced settings, continuously: the vertex of the
    parabola in log(setting) through the best grid point and its two neighbours, kept inside them
    (the best grid point itself at an edge of the grid, or where the curve is not convex there)."""
    log_s, losses = np.log(np.asarray(settings, np.float64)), np.asarray(losses, np.float64)
    order = np.argsort(log_s)
    log_s, losses = log_s[order], losses[order]
    i = int(np.argmin(losses))
    if i == 0 or i == len(losses) - 1:
        return float(np.exp(log_s[i]))
    x, y = log_s[i - 1 : i + 2], losses[i - 1 : i + 2]
    a, b, _ = np.polyfit(x, y, 2)
    if a <= 0:
        return float(np.exp(log_s[i]))
    return float(np.exp(np.clip(-b / (2 * a), x[0], x[2])))


def local_minimum(settings: list[float], loss) -> float:
    """`refine_minimum` around the grid's local minimum of `loss(g)` (g: an index of `settings`)
    that a downhill walk from the grid's middle reaches, scoring only the settings it visits and
    their neighbours (3-6 of the default nine): the same value as `refine_minimum` on the whole
    grid wherever the curve has one minimum (2,315 of 2,324 calibration curves of this project's
    runs, 2026-12-05; the other 9: lore on item-split cyclic data, flat at log 2 within 0.02, gate shut)."""
    if len(settings) == 1:
        return float(settings[0])
    order = [int(g) for g in np.argsort(np.log(np.asarray(settings, np.float64)))]
    seen: dict[int, float] = {}

    def at(i: int) -> float:
        if i not in seen:
            seen[i] = loss(order[i])
        return seen[i]

    i = len(order) // 2
    while True:
        near = [j for j in (i - 1, i + 1) if 0 <= j < len(order)]
        best = min(near, key=at)
        if at(best) >= at(i):
            break
        i = best
    near = [j for j in (i - 1, i, i + 1) if 0 <= j < len(order)]
    return refine_minimum([settings[order[j]] for j in near], [at(j) for j in near])


def _interpolated(curves: Sequence, settings: list[float], value: float, name: str) -> np.ndarray:
    """Per-user sums `name` at `value`, linear in log(setting) between the two grid values around
    it (curves: [G] per-user sums; only those two are read, one where `value` is on the grid); the
    one curve where the grid has one setting."""
    if len(settings) == 1:
        return curves[0][name]
    log_s = np.log(np.asarray(settings, np.float64))
    order = np.argsort(log_s)
    xs = log_s[order]
    x = np.clip(np.log(value), xs[0], xs[-1])
    j = int(np.clip(np.searchsorted(xs, x) - 1, 0, len(settings) - 2))
    t = (x - xs[j]) / (xs[j + 1] - xs[j])
    if t < 1e-9:
        return curves[order[j]][name]
    if t > 1 - 1e-9:
        return curves[order[j + 1]][name]
    return (1 - t) * curves[order[j]][name] + t * curves[order[j + 1]][name]


def _fit(settings: list[float], on_grid: Sequence, users: np.ndarray) -> float:
    return local_minimum(settings, lambda g: _mean_log_loss(on_grid[g], users))


def pooled_curves(curves: list[Sequence]) -> LazyCurves:
    """`[K][G]` per-user sums (one grid curve per k) -> `[G]`, their sums over k, setting by
    setting (each summed, and its k's scored, when first read)."""
    return LazyCurves(len(curves[0]), lambda g: functools.reduce(_add, [curve[g] for curve in curves], None))


def pooled_over_k(scores: list[Scores]) -> LazyCurves:
    """[G] per-user sums over every k's users and queries (each k's own episodes), for one scale per mode."""
    return pooled_curves([sc.on_grid for sc in scores])


REPORT_LEVEL = 0.95  # the two-sided intervals reported beside each decision (`gain_*_ci95`)


def one_sided_bounds(numerator, denominator, level: float) -> tuple[float | None, float | None]:
    """(lower, upper) one-sided `level` confidence bounds of Σ numerator / Σ denominator over users
    (paired bootstrap): the ends of the two-sided (2·level − 1) interval. The gate asks one-sided
    questions (is there a gain? once open, is there a loss?), each at `level`."""
    return metrics.bootstrap_ratio_interval(numerator, denominator, level=_two_sided(level))


def _two_sided(level: float) -> float:
    """The two-sided level whose percentile interval's ends are one-sided `level` bounds."""
    return 2 * level - 1


def _folds(n: int) -> np.ndarray:
    """The fixed random split of the calibration users in two folds (cross-fitting)."""
    return np.random.default_rng(0).permutation(n) % 2


def cross_fit(settings: list[float], curves: list[dict]) -> tuple[float, list[float | None]]:
    """The setting fitted on every user with weight in `curves` ([G] per-user sums), and the one
    fitted on each fold's complement (None where the other fold has no user)."""
    users = np.flatnonzero(_weight(curves) > 0)
    fold = _folds(len(_weight(curves)))
    others = [users[fold[users] != f] for f in (0, 1)]
    return _fit(settings, curves, users), [_fit(settings, curves, o) if len(o) else None for o in others]


def choose_scale(scores: Scores, pooled: tuple[float, list[float | None]] | None, settings: list[float], *,
                 rule: str = "per_k", level: float = 0.95) -> tuple[float, str, tuple[float, float]]:
    """A k's setting under `eval.scale_by_k` (`rule`): (setting, "this k" or "pooled over k", the
    setting each fold of users gets when scored cross-fitted, i.e. fitted on the other fold).
    `pooled`: `cross_fit` of every k's users pooled (`pooled_over_k`; unused under "per_k").

    "evidence": the pooled fit unless the k's own fit, cross-fitted, lowers its users' log-loss
    with a one-sided lower bound above 0 (`one_sided_bounds` at `level`). Few users reach a large k (on a sparse panel a
    couple of dozen): alone they pick a scale by noise, e.g. the population pin, which then holds
    every larger k back; pooled, hundreds of users decide it."""
    own, own_folds = cross_fit(settings, scores.on_grid)
    own_folds = [own if f is None else f for f in own_folds]
    if rule == "per_k" or len(settings) == 1:
        return own, "this k", tuple(own_folds)
    shared, pooled_folds = pooled
    pooled_folds = [own_folds[f] if s is None else s for f, s in enumerate(pooled_folds)]
    if rule == "pooled":
        return shared, "pooled over k", tuple(pooled_folds)
    weight = _weight(scores.on_grid)
    users, fold = np.flatnonzero(weight > 0), _folds(len(scores.ids))
    gain = np.zeros(len(scores.ids))
    for f in (0, 1):
        mine = users[fold[users] == f]
        at = lambda s: _interpolated(scores.on_grid, settings, s, "log_loss_sum")[mine]  # noqa: E731
        gain[mine] = at(pooled_folds[f]) - at(own_folds[f])
    low, _ = one_sided_bounds(gain[users], weight[users], level)
    if low is not None and low > 0:
        return own, "this k", tuple(own_folds)
    return shared, "pooled over k", tuple(pooled_folds)


def decide(k: int, scores: Scores, settings: list[float], *, gate: bool = True, min_users: int = 20,
           level: float = 0.95, accuracy_margin: float | None = None, exact: tuple[dict, dict] | None = None, setting: float | None = None,
           opened_at: int | None = None, fold_settings: tuple[float, float] | None = None) -> Decision:
    """The (mode, k) decision from the calibration users' per-user sums (`Calibration.score_grid`).

    `setting` / `exact`: the refined setting and the (population, personalized) per-user sums scored
    exactly there (else interpolated on the grid). `opened_at`: the smallest k below this one where
    the gate opened, if any: then more answers under a prior fitted for them keep it open unless
    the users here show a loss (a one-sided upper bound below 0). Fewer users reach a larger k, so its own
    interval is wider; a Bayesian posterior predictive with a calibrated prior does not get worse
    in expectation as answers accumulate, so the evidence at the smaller k carries.
    `fold_settings`: the setting each fold of users is scored at (fitted on the other fold;
    `choose_scale`); default: this k's own fit on the other fold."""
    users = np.flatnonzero(_weight(scores.on_grid) > 0)
    setting = _fit(settings, scores.on_grid, users) if setting is None else setting
    if exact is None:
        exact = tuple({name: _interpolated(curves, settings, setting, name) for name in _middle(curves)}
                      for curves in (scores.population, scores.on_grid))
    population, at = exact

    # Cross-fitted gain: users in two folds (a fixed random split), each scored at the setting fitted on the other.
    fold = _folds(len(scores.ids))
    if fold_settings is None:
        fold_settings = [setting if s is None else s for s in cross_fit(settings, scores.on_grid)[1]]
    gain_ll, gain_correct = np.zeros(len(scores.ids)), np.zeros(len(scores.ids))
    for f in (0, 1):
        mine, fitted = users[fold[users] == f], fold_settings[f]
        pers = {n: _interpolated(scores.on_grid, settings, fitted, n) for n in ("log_loss_sum", "correct")}
        pop = {n: _interpolated(scores.population, settings, fitted, n) for n in ("log_loss_sum", "correct")}
        gain_ll[mine] = pop["log_loss_sum"][mine] - pers["log_loss_sum"][mine]
        gain_correct[mine] = pers["correct"][mine] - pop["correct"][mine]

    weight, decided = population["weight"], population["n"]
    gain = float(gain_ll[users].sum() / max(weight[users].sum(), 1e-12))
    # The reported two-sided interval and the gate's one-sided bounds (`one_sided_bounds`), from one resampling.
    levels = (REPORT_LEVEL, _two_sided(level))
    (low, high), (bound_low, bound_high) = metrics.bootstrap_ratio_intervals(gain_ll[users], weight[users], levels)
    gain_acc = float(gain_correct[users].sum() / max(decided[users].sum(), 1e-12))
    (acc_low, acc_high), (acc_bound_low, acc_bound_high) = metrics.bootstrap_ratio_intervals(
        gain_correct[users], decided[users], levels)
    acc_text = f"accuracy {gain_acc:+.4f} [{acc_low:+.4f}, {acc_high:+.4f}]" if acc_low is not None else f"accuracy {gain_acc:+.4f}"
    ll_text = (f"log-loss gain {gain:+.4f} [{low:+.4f}, {high:+.4f}], one-sided {level:.0%} lower bound {bound_low:+.4f}"
               if low is not None else f"log-loss gain {gain:+.4f}")
    n_users = {"seen": int(scores.is_seen[users].sum()), "unseen_val": int((~scores.is_seen[users]).sum())}
    shown_loss = (bound_high is not None and bound_high < 0) or (acc_bound_high is not None and acc_bound_high < 0)
    if not gate:
        personalize, reason = True, "gate off (eval.gate=false): personalized at every k"
    elif len(users) < min_users:
        personalize, reason = False, f"only {len(users)} calibration users reach k={k} (eval.gate_min_users={min_users})"
    elif opened_at is not None:
        personalize = not shown_loss
        reason = (f"{ll_text}, {acc_text}: "
                  + (f"a loss (a one-sided {level:.0%} upper bound below 0)" if shown_loss
                     else f"not a loss, and the gate opened at k={opened_at}"))
    elif bound_low is None or bound_low <= 0:
        personalize, reason = False, f"{ll_text}: not above 0"
    elif gain_acc < 0:
        personalize, reason = False, f"{ll_text} but {acc_text}: an accuracy loss on average"
    elif accuracy_margin is not None and acc_bound_low is not None and acc_bound_low < -accuracy_margin:
        personalize, reason = False, (f"{ll_text} but {acc_text}: an accuracy loss over {accuracy_margin:.1%} not ruled out "
                                      f"at one-sided {level:.0%} (eval.gate_accuracy_margin)")
    else:
        personalize, reason = True, f"{ll_text}, {acc_text}"
    acc = lambda s: float(s["correct"][users].sum() / max(s["n"][users].sum(), 1e-12))  # noqa: E731
    return Decision(
        k=int(k), prior_scale=float(setting), personalize=bool(personalize), n_users=n_users,
        n_query_pairs=int(round(decided[users].sum())),
        log_loss={"population": _mean_log_loss(population, users), "personalized": _mean_log_loss(at, users)},
        accuracy={"population": acc(population), "personalized": acc(at)},
        gain_log_loss=gain, gain_log_loss_ci95=[low, high], gain_accuracy=gain_acc, gain_accuracy_ci95=[acc_low, acc_high],
        gain_log_loss_lower=bound_low, gate_level=float(level),
        grid=[float(s) for s in settings], grid_log_loss=[_mean_log_loss(scores.on_grid[g], users) if _scored(scores.on_grid, g) else None
                       for g in range(len(settings))], reason=reason,
    )


RATIO_STEP = 4.0  # the factor between the residual ratios tried (`search_ratio`)
RATIO_MAX_STEPS = 3  # at most this many steps from ρ = 1 in the direction that pays: ρ within [4⁻³, 4³]


def search_ratio(loss, step: float = RATIO_STEP, max_steps: int = RATIO_MAX_STEPS) -> tuple[float, dict[float, float]]:
    """The residual ratio ρ with the lowest `loss(ρ)`, on factors of `step` from ρ = 1: ρ = step
    and, if that does not pay, 1/step; then further in the direction that paid until the loss rises
    (at most `max_steps` steps). Returns (ρ, {ρ: loss} of every ρ tried). The loss is flat near its
    minimum (measured: rail_nl and `idiosyncratic` within 0.001 between ρ = 4 and 16), so the
    factor-of-4 resolution costs little, and each ρ tried costs one scoring of the calibration grid."""
    tried = {1.0: loss(1.0)}
    for direction in (step, 1.0 / step):
        tried[direction] = loss(direction)
        if tried[direction] < tried[1.0]:
            break
    else:
        return 1.0, tried
    best = direction
    for _ in range(max_steps - 1):
        candidate = best * direction
        tried[candidate] = loss(candidate)
        if tried[candidate] >= tried[best]:
            break
        best = candidate
    return best, tried


def calibrate(adapt_and_predict, params, tables, comparisons: Comparisons, *, held_out_rows, val_users, seen_users,
              shots: list[int], mode: str, seeds: list[int], settings: list[float], gate: bool = True,
              min_users: int = 20, level: float = 0.95, accuracy_margin: float | None = None, max_seen: int | None = None,
              scale_by_k: str = "per_k", train_rows: np.ndarray | None = None,
              residual_ratio: float | None = 1.0) -> dict[int, Decision]:
    """{k: Decision} in `mode` for every k that calibration users reach (see the module
    docstring): the grid scored per user (one call per seed batch, k and setting), the setting refined, the gate. A k
    that fewer than `min_users` reach is skipped once a smaller k is decided. `residual_ratio`: the
    prior's residual-block ratio ρ (`base.empirical_prior`); None = fitted per mode (`search_ratio`
    on the pooled log-loss of every k's users, each ρ at its own fitted scale), for a model with a
    `residual_block` only (pass 1.0 for the others)."""
    calibration = Calibration(adapt_and_predict, params, tables, comparisons, held_out_rows=held_out_rows,
                              val_users=val_users, seen_users=seen_users, shots=shots, mode=mode, seeds=seeds,
                              max_seen=max_seen, train_rows=train_rows)
    reached = [k for k in sorted(shots) if calibration.reaches(k)]
    ratio_losses = None
    if residual_ratio is None and reached and len(settings) > 1:
        residual_ratio, ratio_losses = search_ratio(lambda ratio: calibration.pooled_log_loss(reached, settings, ratio))
    ratio = 1.0 if residual_ratio is None else float(residual_ratio)
    scores = {k: calibration.score_grid(k, settings, ratio) for k in reached}
    pooled = cross_fit(settings, pooled_over_k(list(scores.values()))) if reached and len(settings) > 1 else None
    chosen = {k: choose_scale(scores[k], pooled, settings, rule=scale_by_k, level=level) for k in reached}
    shared = pooled[0] if pooled else None
    decisions = {}
    for k in reached:
        if calibration.reaches(k) < min_users and decisions:
            continue
        setting, source, fold_settings = chosen[k]
        opened = [kk for kk, d in decisions.items() if d.personalize]
        decision = decide(k, scores[k], settings, gate=gate, min_users=min_users, level=level, accuracy_margin=accuracy_margin,
                          setting=setting, opened_at=min(opened) if opened else None, fold_settings=fold_settings)
        decisions[k] = dataclasses.replace(decision, scale_from=source, pooled_scale=shared,
                                           residual_ratio=ratio,
                                           residual_ratio_log_loss=None if ratio_losses is None else {
                                               f"{r:g}": v for r, v in sorted(ratio_losses.items())})
    return decisions
