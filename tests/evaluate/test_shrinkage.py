"""How far to trust a new user (pluralign.evaluate.shrinkage): the scale fitted continuously on
calibration users, the gate that personalizes only on evidence, and the run's wiring (never a
test user in calibration)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pluralign.data.synthetic import IdealPointConfig
from pluralign.evaluate import fewshot, metrics, shrinkage
from pluralign.evaluate.fewshot import EvalConfig
from pluralign.evaluate.shrinkage import Decision, Scores
from pluralign.models import PALConfig
from pluralign.run import RunConfig, run
from pluralign.train.trainer import TrainConfig

SETTINGS = [0.01, 0.1, 1.0, 10.0, 100.0]


def test_refine_minimum_is_continuous_and_stays_in_the_grid():
    settings = np.exp(np.linspace(-4, 4, 9))
    curve = 0.5 + 0.01 * (np.log(settings) - np.log(0.7)) ** 2  # minimum between grid points
    assert shrinkage.refine_minimum(list(settings), list(curve)) == pytest.approx(0.7, rel=1e-6)
    assert shrinkage.refine_minimum(list(settings), list(-np.log(settings))) == pytest.approx(settings[-1])  # at the edge
    flat = [0.5, 0.4, 0.4, 0.4, 0.5]  # the vertex never leaves the best point's neighbours
    assert 0.01 <= shrinkage.refine_minimum(SETTINGS, flat) <= 1.0


def test_the_walk_finds_the_grids_minimum_scoring_only_the_settings_around_it():
    """`local_minimum` = `refine_minimum` on the whole grid for a curve with one minimum, wherever
    that minimum is (between grid points, on a grid point, at either edge), while scoring only the
    settings the downhill walk from the middle visits and their neighbours."""
    settings = list(np.exp(np.linspace(-6.9, 6.9, 9)))
    for centre in (-6.0, -2.3, 0.0, 0.4, 3.1, 8.0, -9.0):
        curve = 0.5 + 0.01 * (np.log(settings) - centre) ** 2
        scored = []
        fitted = shrinkage.local_minimum(settings, lambda g: scored.append(g) or curve[g])
        assert fitted == pytest.approx(shrinkage.refine_minimum(settings, list(curve)), rel=1e-9)
        nearest = int(np.argmin(np.abs(np.log(settings) - centre)))
        assert len(set(scored)) == len(scored) <= abs(nearest - 4) + 3  # each once, only on the way
    assert shrinkage.local_minimum([1.0], lambda g: 0.3) == 1.0


def test_a_lazy_grid_gives_the_decision_of_the_whole_grid_and_scores_less_of_it():
    """The same `decide` on `LazyCurves` as on lists: every figure equal, the settings far from the
    minimum never computed, and results.json's grid_log_loss null exactly there."""
    rng = np.random.default_rng(3)
    full = scores(300, lambda s: 0.05 - 0.01 * np.log10(s / 3.0) ** 2, rng)
    computed = set()

    def lazy(curves):
        return shrinkage.LazyCurves(len(curves), lambda g: computed.add(g) or curves[g])

    eager = shrinkage.decide(5, full, SETTINGS)
    walked = shrinkage.decide(5, Scores(ids=full.ids, is_seen=full.is_seen, population=lazy(full.population),
                                        on_grid=lazy(full.on_grid)), SETTINGS)
    assert walked.prior_scale == eager.prior_scale and walked.personalize == eager.personalize
    assert walked.gain_log_loss == eager.gain_log_loss and walked.log_loss == eager.log_loss
    assert computed == {1, 2, 3}  # the minimum lies between 1 and 10: the walk stops at 1
    assert [v is not None for v in walked.grid_log_loss] == [g in computed for g in range(len(SETTINGS))]
    assert [v for v in walked.grid_log_loss if v is not None] == [eager.grid_log_loss[g] for g in sorted(computed)]


def scores(n_users: int, gain_per_pair, rng, pairs: int = 10, noise: float = 0.3) -> Scores:
    """Per-user sums where the personalized log-loss at setting s is the population's minus
    gain_per_pair(s) per pair, plus per-user noise; accuracy follows the same gain."""
    pop_ll = np.full(n_users, 0.6 * pairs)
    noise_u = rng.normal(0, noise, n_users)
    population = {"n": np.full(n_users, float(pairs)), "correct": np.full(n_users, 0.7 * pairs),
                  "weight": np.full(n_users, float(pairs)), "log_loss_sum": pop_ll}
    on_grid = []
    for s in SETTINGS:
        g = gain_per_pair(s) * pairs
        on_grid.append({"n": population["n"], "correct": population["correct"] + g * 0.5,
                        "weight": population["weight"], "log_loss_sum": pop_ll - g + noise_u})
    return Scores(ids=np.arange(n_users), is_seen=np.arange(n_users) < n_users - 20,
                  population=[population] * len(SETTINGS), on_grid=on_grid)


def test_gate_personalizes_where_users_gain_and_not_where_they_do_not():
    rng = np.random.default_rng(0)
    helps = shrinkage.decide(5, scores(300, lambda s: 0.05 - 0.01 * np.log10(s) ** 2, rng), SETTINGS)
    assert helps.personalize and helps.gain_log_loss > 0.03 and helps.gain_log_loss_ci95[0] > 0
    assert helps.prior_scale == pytest.approx(1.0, rel=0.05)  # the curve's vertex
    assert helps.n_users == {"seen": 280, "unseen_val": 20}
    assert helps.log_loss["personalized"] < helps.log_loss["population"]

    # Personalizing hurts at every setting: the gate keeps the population, and says why.
    hurts = shrinkage.decide(5, scores(300, lambda s: -0.02 / (1 + s), rng), SETTINGS)
    assert not hurts.personalize and "not above 0" in hurts.reason

    # A gain that is noise (zero on average, different per user) does not switch it on either.
    noisy = scores(300, lambda s: 0.0, rng, noise=2.0)
    assert not shrinkage.decide(5, noisy, SETTINGS).personalize

    # Too few users to decide on: population, whatever the gain.
    few = shrinkage.decide(5, scores(12, lambda s: 0.05, rng), SETTINGS, min_users=20)
    assert not few.personalize and "gate_min_users" in few.reason
    # With the gate off the fitted scale is used at every k.
    assert shrinkage.decide(5, scores(300, lambda s: -0.02, rng), SETTINGS, gate=False).personalize


def test_gate_asks_a_one_sided_lower_bound_at_gate_level():
    """The gate's question is one-sided (is there a gain?): it opens where the gain's one-sided
    `gate_level` lower bound is above 0, the lower end of the two-sided (2·level − 1) interval, not
    of the reported 95 % one. A gain 1.8 standard errors above 0 passes at 95 % one-sided (1.645)
    though its two-sided 95 % interval (1.96) reaches below 0; at gate_level 0.99 (2.33) it fails."""
    n, pairs, sd = 400, 10.0, 2.0
    noise = np.random.default_rng(0).normal(size=n)
    noise = (noise - noise.mean()) / noise.std() * sd  # exactly mean 0, sd 2: the mean gain is exactly g
    g = 1.8 * sd / pairs / np.sqrt(n)  # per pair: 1.8 standard errors
    population = {"n": np.full(n, pairs), "correct": np.full(n, 7.0), "weight": np.full(n, pairs),
                  "log_loss_sum": np.full(n, 6.0)}
    on_grid = [{**population, "log_loss_sum": 6.0 - g * pairs + noise, "correct": np.full(n, 7.1)} for _ in SETTINGS]
    case = Scores(ids=np.arange(n), is_seen=np.ones(n, bool), population=[population] * len(SETTINGS), on_grid=on_grid)

    opened = shrinkage.decide(3, case, SETTINGS)
    assert opened.gain_log_loss == pytest.approx(g)
    assert opened.gain_log_loss_ci95[0] < 0 < opened.gain_log_loss_lower  # reported two-sided 95 %; one-sided 95 % bound
    assert opened.personalize and opened.gate_level == 0.95 and "one-sided 95% lower bound" in opened.reason
    weight, gain = np.full(n, pairs), g * pairs - noise
    assert opened.gain_log_loss_lower == pytest.approx(shrinkage.one_sided_bounds(gain, weight, 0.95)[0], rel=1e-9)
    assert shrinkage.one_sided_bounds(gain, weight, 0.95) == pytest.approx(metrics.bootstrap_ratio_interval(gain, weight, level=0.90), rel=1e-9)
    strict = shrinkage.decide(3, case, SETTINGS, level=0.99)
    assert not strict.personalize and strict.gain_log_loss_lower < 0 and "not above 0" in strict.reason


def accuracy_case(accuracy_shift, rng, n=300, pairs=10.0):
    """A clear log-loss gain for every user; each user's correct count moves by `accuracy_shift` on
    average, plus a close call flipped either way (half the users each way: the accuracy gain's noise)."""
    population = {"n": np.full(n, pairs), "correct": np.full(n, 7.0), "weight": np.full(n, pairs),
                  "log_loss_sum": np.full(n, 6.0)}
    flips = rng.permutation(np.arange(n) % 2 * 2.0 - 1.0)
    on_grid = [{**population, "log_loss_sum": 6.0 - 0.3 + rng.normal(0, 0.2, n), "correct": 7.0 + accuracy_shift + flips}
               for _ in SETTINGS]
    return Scores(ids=np.arange(n), is_seen=np.ones(n, bool), population=[population] * len(SETTINGS), on_grid=on_grid)


def test_gate_asks_accuracy_for_no_loss_on_average_and_optionally_a_margin():
    """A clear log-loss gain opens the gate unless the accuracy gain is negative on average; the
    accuracy interval's width does not block it by default (on a sparse panel it is points wide).
    With eval.gate_accuracy_margin the interval must rule out a loss beyond the margin."""
    rng = np.random.default_rng(3)
    losing = shrinkage.decide(2, accuracy_case(-0.2, rng), SETTINGS)
    assert losing.gain_log_loss_ci95[0] > 0 and losing.gain_accuracy < 0
    assert not losing.personalize and "accuracy loss on average" in losing.reason
    few = accuracy_case(0.1, rng, n=100)  # +1 point on average, an interval points wide
    slight = shrinkage.decide(2, few, SETTINGS)
    assert slight.gain_accuracy > 0 and slight.gain_accuracy_ci95[0] < -0.003 and slight.personalize

    margin = shrinkage.decide(2, few, SETTINGS, accuracy_margin=0.003)
    assert not margin.personalize and "gate_accuracy_margin" in margin.reason
    assert shrinkage.decide(2, few, SETTINGS, accuracy_margin=0.5).personalize
    assert shrinkage.decide(2, accuracy_case(0.5, rng), SETTINGS, accuracy_margin=0.003).personalize


def test_the_gain_is_cross_fitted():
    """A setting that wins on every user only through each user's own noise draw gives no
    cross-fitted gain: with one fold's best setting scored on the other, the noise does not pay."""
    rng = np.random.default_rng(1)
    n = 400
    population = {"n": np.full(n, 10.0), "correct": np.full(n, 7.0), "weight": np.full(n, 10.0),
                  "log_loss_sum": np.full(n, 6.0)}
    # each user's loss is lower than the population at exactly one random grid setting, higher at the others
    best = rng.integers(0, len(SETTINGS), n)
    on_grid = [{**population, "log_loss_sum": 6.0 + np.where(best == g, -1.0, 0.3)} for g in range(len(SETTINGS))]
    d = shrinkage.decide(3, Scores(ids=np.arange(n), is_seen=np.ones(n, bool), population=[population] * len(SETTINGS),
                                   on_grid=on_grid), SETTINGS)
    assert not d.personalize and d.gain_log_loss < 0


def test_setting_and_gate_at_k():
    scales, gates = {1: 5.0, 5: 0.5}, {1: False, 5: True}
    assert fewshot.entry_at(scales, 0) is None and not fewshot.gate_at(gates, 0)  # below every decided k: the population
    assert (fewshot.strength_at(scales, 3), fewshot.gate_at(gates, 3)) == (5.0, False)
    assert (fewshot.strength_at(scales, 50), fewshot.gate_at(gates, 50)) == (0.5, True)
    assert (fewshot.strength_at({"5": 0.5}, 7), fewshot.gate_at({"5": True}, 7)) == (0.5, True)  # results.json form
    assert [fewshot.gate_at(gates, k) for k in (0, 1, 4, 5, 20)] == [False, False, False, True, True]
    assert fewshot.gate_at(None, 1)


def test_the_population_is_the_same_settings_0_shot_prediction():
    """Under `bayes` the 0-shot prediction depends on the prior's scale (a wide prior tempers it):
    the gain at a setting is measured against the 0-shot prediction at that same setting."""
    n = 200
    base_sums = {"n": np.full(n, 10.0), "correct": np.full(n, 7.0), "weight": np.full(n, 10.0)}
    # 0-shot log-loss is poor at weak priors (over-tempered) and fine at strong ones; k-shot is 0.02/pair better throughout
    population = [{**base_sums, "log_loss_sum": np.full(n, 10 * (0.6 + 0.1 / s))} for s in SETTINGS]
    on_grid = [{**base_sums, "log_loss_sum": p["log_loss_sum"] - 0.2 + np.random.default_rng(0).normal(0, 0.05, n)}
               for p in population]
    d = shrinkage.decide(2, Scores(ids=np.arange(n), is_seen=np.ones(n, bool), population=population, on_grid=on_grid),
                         SETTINGS)
    assert d.gain_log_loss == pytest.approx(0.02, abs=0.005) and d.personalize


def test_calibration_episodes_use_held_out_rows_of_seen_users_and_all_rows_of_val_users(tiny_dataset):
    c = tiny_dataset.comparisons
    users = np.unique(c.user)
    seen, val = users[: len(users) // 2], users[len(users) // 2 : len(users) // 2 + 5]
    seen_rows = np.flatnonzero(np.isin(c.user, seen))
    held_out = np.sort(np.random.default_rng(0).choice(seen_rows, len(seen_rows) // 3, replace=False))
    for mode in ("random", "item_disjoint"):
        ep, is_seen = shrinkage.calibration_episodes(c, held_out, val, max_shots=20, mode=mode, seed=0)
        assert set(ep.users[is_seen]) <= set(seen) and set(ep.users[~is_seen]) == set(val)
        for u, flag, pool, query in zip(ep.users, is_seen, ep.pool, ep.query):
            rows = np.concatenate([pool[pool >= 0], query[query >= 0]])
            assert (c.user[rows] == u).all()
            assert set(rows) <= set(held_out) if flag else True
            assert not set(pool[pool >= 0]) & set(query[query >= 0])
        assert (~is_seen).sum() == len(val)


def test_training_support_episodes_take_support_from_training_rows_and_query_from_held_out(tiny_dataset):
    """eval.calibration_support=training: a seen user's support pool is their training rows, the
    query their held-out rows; item split keeps the two on disjoint items, random drops a pool
    copy of a query comparison; many more users then reach a large k than from held-out rows alone."""
    from pluralign.data.duplicates import comparison_keys

    c = tiny_dataset.comparisons
    users = np.unique(c.user)
    seen, val = users[:40], users[40:45]
    seen_rows = np.flatnonzero(np.isin(c.user, seen))
    held_out = np.sort(np.random.default_rng(0).choice(seen_rows, len(seen_rows) // 5, replace=False))
    train = np.setdiff1d(seen_rows, held_out)
    for mode in ("random", "item_disjoint"):
        ep, is_seen = shrinkage.calibration_episodes(c, held_out, val, max_shots=10, mode=mode, seed=0, train_rows=train)
        assert set(ep.users[is_seen]) == set(seen) and set(ep.users[~is_seen]) == set(val)
        for u, pool, query in zip(ep.users[is_seen], ep.pool[is_seen], ep.query[is_seen]):
            pool, query = pool[pool >= 0], query[query >= 0]
            assert set(pool) <= set(train) and set(query) <= set(held_out) and (c.user[np.r_[pool, query]] == u).all()
            if mode == "item_disjoint":
                assert not (set(c.a[pool]) | set(c.b[pool])) & (set(c.a[query]) | set(c.b[query]))
            else:
                keys = comparison_keys(c, np.r_[pool, query])
                assert not set(keys[: len(pool)]) & set(keys[len(pool):])
        held_out_only, flags = shrinkage.calibration_episodes(c, held_out, val, max_shots=10, mode=mode, seed=0)
        assert (ep.pool_size[is_seen] >= 5).sum() > 3 * max(1, (held_out_only.pool_size[flags] >= 5).sum())


def test_run_calibrates_on_seen_held_out_and_val_users_and_scores_test_users_with_its_decisions(tmp_path, monkeypatch):
    """The run hands calibration only seen users' held-out rows and unseen-val users, never a
    test user; val and test users are then scored with the decided scales and gates."""
    calls, scored = [], []

    def fake_calibrate(adapt, params, tables, comparisons, *, held_out_rows, val_users, mode, shots, **_):
        calls.append((np.asarray(held_out_rows), np.asarray(val_users), mode, shots))
        on = mode == "random"
        d = lambda k, s, p: Decision(k, s, p, {"seen": 1, "unseen_val": 1}, 1, {}, {}, 0.0, [0, 0], 0.0, [], [], "fake")  # noqa: E731
        return {1: d(1, 3.0, False), 5: d(5, 0.3 if on else 1.0, on)}

    def fake_evaluate_unseen(adapt, params, tables, comparisons, users, *, shots, mode, prior_strength, personalize, **_):
        scored.append((np.asarray(users), mode, prior_strength, personalize))
        return {k: {"accuracy": 0.7, "accuracy_std": 0.0, "log_loss": 0.5, "n_users": len(users)} for k in shots}

    monkeypatch.setattr(shrinkage, "calibrate", fake_calibrate)
    monkeypatch.setattr(fewshot, "evaluate_unseen", fake_evaluate_unseen)
    config = RunConfig(
        model=PALConfig(name="pal_a", n_prototypes=2, latent_dim=4),
        data=IdealPointConfig(n_users=40, n_items=100, comparisons_per_user=20, dim=16, seed=0),
        train=TrainConfig(progress=False, max_epochs=1, batch_size=128, checkpoint=False),
        eval=EvalConfig(shots=[1, 5, 40], modes=["random", "item_disjoint"], draws=1, inference="map"),
        cache_dir=str(tmp_path / "cache"),
    )
    results = run(config, tmp_path / "run")
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    from pluralign.data.sources import load_dataset
    comparisons = load_dataset(config.data, config.cache_dir).comparisons
    assert [m for _, _, m, _ in calls] == ["random", "item_disjoint"]
    for rows, val, mode, shots in calls:
        assert set(comparisons.user[rows]) <= set(split["seen"]) and len(rows) > 0
        np.testing.assert_array_equal(np.sort(val), np.sort(split["unseen_val"]))
        # 40 answers are out of every user's reach (20 comparisons each): the largest k that unseen
        # users are scored at instead is decided too, not left to the decision at the k below it.
        largest = {fewshot.scored_episodes(comparisons, np.asarray(split[users]), shots=[1, 5, 40], mode=mode, seeds=[0],
                                           draws=1)[1][-1] for users in ("unseen_val", "unseen_test")}
        assert 40 not in largest and shots == sorted({1, 5, 40} | largest)
    test_calls = [(m, s, p) for users, m, s, p in scored if set(users) == set(split["unseen_test"])]
    assert sorted(test_calls, key=lambda c: c[0]) == [
        ("item_disjoint", {1: 3.0, 5: 1.0}, {1: False, 5: False}), ("random", {1: 3.0, 5: 0.3}, {1: False, 5: True})]
    assert {m for users, m, *_ in scored if set(users) == set(split["unseen_val"])} == {"random", "item_disjoint"}
    assert len(scored) == 4  # val and test, once per mode: no per-candidate val curves any more
    unseen = results["unseen"]
    assert unseen["personalize_by_k"] == {"random": {1: False, 5: True}, "item_disjoint": {1: False, 5: False}}
    assert unseen["shrinkage"]["random"][5]["reason"] == "fake"


def test_calibration_deals_users_to_seeds_and_scores_each_once(tiny_dataset):
    """Every calibration user is scored under exactly one seed's parameters, and a model whose
    answers tell the truth is personalized while one whose answers are noise is not."""
    import jax.numpy as jnp

    c = tiny_dataset.comparisons
    users = np.unique(c.user)
    seen, val = users[:40], users[40:50]
    held_out = np.flatnonzero(np.isin(c.user, seen))[::3]
    used = []

    def adapt(params, tables, pool, k, query, strength, seen_users, residual_ratio=1.0):  # params: this seed's [] "parameter"; k: []
        used.append(float(params))
        sign = 2.0 * query.label - 1.0
        informative = jnp.where(k > 0, params * sign, 0.0)  # the truth's sign with k answers; 0 logit without
        return None, informative

    params = jnp.asarray([1.0, 2.0, 3.0])  # three seeds
    calibration = shrinkage.Calibration(adapt, params, None, c, held_out_rows=held_out, val_users=val, seen_users=None,
                                        shots=[1, 2], mode="random", seeds=[0, 1, 2])
    assert len(calibration.batches) == 3 and len(np.unique(calibration.ids)) == len(calibration.ids)
    assert set(calibration.ids) == set(np.unique(c.user[held_out])) | set(val)
    decisions = shrinkage.calibrate(adapt, params, None, c, held_out_rows=held_out, val_users=val, seen_users=None,
                                    shots=[1, 2], mode="random", seeds=[0, 1, 2], settings=[1.0])
    assert decisions[1].personalize and decisions[1].n_users["unseen_val"] == len(val)
    assert set(used) == {1.0, 2.0, 3.0}  # every seed's parameters scored its share of the users
    assert decisions[1].accuracy["personalized"] == 1.0

    noise = lambda *a: (None, jnp.where(a[3] > 0, 3.0 * jnp.sin(1e3 * a[4].a.astype(jnp.float32)), 0.0))  # noqa: E731  confident, unrelated
    assert not shrinkage.calibrate(noise, params, None, c, held_out_rows=held_out, val_users=val, seen_users=None,
                                   shots=[1], mode="random", seeds=[0, 1, 2], settings=[1.0])[1].personalize


@pytest.mark.parametrize("n_users,n_seeds", [(450, 3), (188, 3), (1000, 3), (129, 1), (2, 3)])
def test_users_are_dealt_to_seeds_in_blocks_that_fill_the_calls(n_users, n_seeds):
    """Each user goes to one seed; every seed gets users while there are enough; the seeds' shares
    take as few `CHUNK_USERS`-wide calls as the users need (round robin: 450 over 3 seeds = 6)."""
    owner = shrinkage.deal_to_seeds(n_users, n_seeds)
    counts = np.bincount(owner, minlength=n_seeds)
    assert owner.shape == (n_users,) and counts.sum() == n_users
    assert (counts > 0).sum() == min(n_users, n_seeds)
    calls = sum(-(-c // fewshot.CHUNK_USERS) for c in counts)
    assert calls == max(-(-n_users // fewshot.CHUNK_USERS), min(n_users, n_seeds))


def test_an_open_gate_stays_open_at_larger_k_unless_users_there_lose():
    """Fewer users reach a larger k: a gain there that is positive but not significant keeps the
    gate opened at a smaller k, and so does an accuracy gain that is not significantly negative; a
    significant loss in log-loss or in accuracy closes it; without an opening it stays shut."""
    rng = np.random.default_rng(3)
    weak = scores(40, lambda s: 0.01, rng, noise=1.0)  # +0.01 per pair, 40 users: not significant alone
    assert not shrinkage.decide(9, weak, SETTINGS).personalize
    carried = shrinkage.decide(9, weak, SETTINGS, opened_at=1)
    assert carried.personalize and "opened at k=1" in carried.reason
    losing = scores(300, lambda s: -0.05, rng)
    assert not shrinkage.decide(9, losing, SETTINGS, opened_at=1).personalize
    noisy_accuracy = shrinkage.decide(9, accuracy_case(-0.02, rng, n=40), SETTINGS, opened_at=1)
    assert noisy_accuracy.gain_accuracy_ci95[0] < 0 < noisy_accuracy.gain_accuracy_ci95[1] and noisy_accuracy.personalize
    fewer_correct = shrinkage.decide(9, accuracy_case(-1.0, rng), SETTINGS, opened_at=1)
    assert fewer_correct.gain_log_loss_ci95[0] > 0 and fewer_correct.gain_accuracy_ci95[1] < 0
    assert not fewer_correct.personalize and "a loss" in fewer_correct.reason


def test_scale_pooled_over_k_unless_a_k_shows_its_own_is_better():
    """eval.scale_by_k=evidence: a k that a few users reach keeps the scale fitted on every k's
    users pooled, even where its own noisy curve points elsewhere; a k whose many users clearly
    prefer another scale keeps its own. per_k and pooled are the two limits."""
    rng = np.random.default_rng(0)
    peaked = lambda best: (lambda s: 0.05 - 0.01 * (np.log10(s) - np.log10(best)) ** 2)  # noqa: E731
    many = scores(400, peaked(1.0), rng, noise=0.3)
    few = scores(400, lambda s: 0.0, rng, noise=0.3)  # 20 users reach this k; their curve is flat but noisy
    for on_grid in few.on_grid:
        on_grid["weight"] = np.where(np.arange(400) < 20, on_grid["weight"], 0.0)
        on_grid["log_loss_sum"] = on_grid["log_loss_sum"] + rng.normal(0, 1.0, 400)
    pooled = shrinkage.cross_fit(SETTINGS, shrinkage.pooled_over_k([many, few]))
    own = shrinkage.choose_scale(few, pooled, SETTINGS, rule="per_k")[0]
    setting, source, folds = shrinkage.choose_scale(few, pooled, SETTINGS, rule="evidence")
    assert source == "pooled over k" and setting == pytest.approx(1.0, rel=0.3) and len(folds) == 2
    assert not own == pytest.approx(setting, rel=0.3)  # alone it would have chosen by noise

    other = scores(400, peaked(0.01), rng, noise=0.3)  # 400 users whose best scale is 100x smaller
    pooled_with_other = shrinkage.cross_fit(SETTINGS, shrinkage.pooled_over_k([many, many, other]))
    setting, source, _ = shrinkage.choose_scale(other, pooled_with_other, SETTINGS, rule="evidence")
    assert source == "this k" and setting < 0.05
    assert shrinkage.choose_scale(other, pooled, SETTINGS, rule="pooled")[1] == "pooled over k"


def test_a_run_says_when_no_calibration_user_decides(monkeypatch, tmp_path):
    """No calibration user reaching the smallest k leaves nothing to fit the scale or open the
    gate on: every new user gets the population, and the run says so in its log and results.json."""
    from pluralign.data.synthetic import IdealPointConfig
    from pluralign.evaluate import fewshot
    from pluralign.evaluate.fewshot import EvalConfig
    from pluralign.models.pal import PALConfig
    from pluralign.run import RunConfig, run
    from pluralign.train.trainer import TrainConfig

    monkeypatch.setattr(shrinkage, "calibrate", lambda *a, **k: {})
    monkeypatch.setattr(fewshot, "evaluate_unseen", lambda *a, shots, **k: {s: {"accuracy": 0.5, "log_loss": 0.7,
                                                                               "n_users": 1} for s in shots})
    config = RunConfig(
        model=PALConfig(name="pal_a", n_prototypes=2, latent_dim=4),
        data=IdealPointConfig(n_users=40, n_items=100, comparisons_per_user=20, dim=16, seed=0),
        train=TrainConfig(progress=False, max_epochs=1, batch_size=128, checkpoint=False),
        eval=EvalConfig(shots=[3], modes=["random"], draws=1, inference="map"),
        cache_dir=str(tmp_path / "cache"),
    )
    results = run(config, tmp_path / "run")
    assert any("nothing decides the prior's scale or the gate" in w for w in results["warnings"])


@pytest.mark.parametrize("best, expect_tried", [
    (1.0, [0.25, 1.0, 4.0]),  # neither direction pays: 3 evaluations
    (16.0, [1.0, 4.0, 16.0, 64.0]),  # up until the loss rises
    (1 / 16, [1 / 64, 1 / 16, 0.25, 1.0, 4.0]),  # 4 does not pay, so down
    (1e4, [1.0, 4.0, 16.0, 64.0]),  # at most RATIO_MAX_STEPS steps
])
def test_search_ratio_walks_factors_of_four_towards_the_minimum(best, expect_tried):
    ratio, tried = shrinkage.search_ratio(lambda r: (np.log(r) - np.log(best)) ** 2)
    assert sorted(tried) == pytest.approx(expect_tried)
    assert ratio == pytest.approx(min(tried, key=tried.get))
    assert ratio == pytest.approx(min(expect_tried, key=lambda r: abs(np.log(r) - np.log(best))))


def test_auto_calibration_support_is_held_out_only_for_an_amortized_encoder():
    """eval.calibration_support=auto: VPL, whose encoder was trained to read the seen users' training
    pairs, calibrates on held-out support; every model that fits a user's state calibrates on
    training support; an explicit setting is kept as given."""
    import types

    from pluralign.models import REGISTRY
    from pluralign.run import calibration_support

    auto = types.SimpleNamespace(eval=EvalConfig())
    assert EvalConfig().calibration_support == "auto"
    chosen = {name: calibration_support(auto, cls) for name, (cls, _) in REGISTRY.items()}
    assert chosen["vpl"] == "held_out"
    assert {name for name, support in chosen.items() if support == "held_out"} == {
        name for name, (cls, _) in REGISTRY.items() if cls.amortized_inference}
    assert chosen["lore"] == chosen["pal_a"] == chosen["bt_residual"] == "training"
    for given in ("training", "held_out"):
        assert calibration_support(types.SimpleNamespace(eval=EvalConfig(calibration_support=given)), REGISTRY["vpl"][0]) == given
    with pytest.raises(ValueError, match="'auto', 'held_out' or 'training'"):
        EvalConfig(calibration_support="seen")
