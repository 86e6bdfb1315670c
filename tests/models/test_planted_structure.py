"""Each model, trained end to end by `run.run`, recovers what it can of a planted structure.

The ideal-point data has 3 user groups that genuinely disagree, and reports two ceilings
from its true parameters: the Bayes-optimal accuracy (the true model) and the accuracy of
the best non-personalized predictor. PAL should come close to the first; BT, which has one
reward for everybody, cannot beat the second; and few-shot inference of an unseen user's
state should lift PAL above its 1-shot accuracy in both support/query modes.
About 25 s on 2 cores for the three trained runs (measured 2026-12-04): every test here is in the
`slow` tier, with the other full runs (lore's, VPL's, DPA's planted-structure tests).
"""

from __future__ import annotations

import pytest

from pluralign.data.synthetic import IdealPointConfig
from pluralign.evaluate.fewshot import EvalConfig
from pluralign.models import BTConfig, PALConfig
from pluralign.run import RunConfig, run
from pluralign.train.trainer import TrainConfig

DATA = IdealPointConfig(n_users=150, n_items=300, comparisons_per_user=60, dim=16, latent_dim=4, n_groups=3, seed=0)
MODELS = {
    "pal_a": PALConfig(name="pal_a", n_prototypes=3, latent_dim=4),
    "pal_b": PALConfig(name="pal_b", n_prototypes=3, latent_dim=4),
    "bt": BTConfig(),
}
# Seen-user test pairs: 105 seen users × 60 × 0.2 ≈ 1,260, so one accuracy has a std of ≈ 0.01.
SAMPLING_SLACK = 0.03


class _Runs(dict):
    """Runs each model on first use, so that one broken model fails only its own tests."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, name):
        config = RunConfig(
            model=MODELS[name],
            data=DATA,
            train=TrainConfig(
                progress=False, max_epochs=60, batch_size=128, learning_rate=0.02, patience=10, checkpoint=False
            ),
            eval=EvalConfig(
                # The tests read k = 1 and the largest k only: no k between (each support width is a compile).
                shots=[1, 20], modes=["random", "item_disjoint"], draws=1, prior_strengths=[1.0, 10.0],
                pair_test_fraction=0.2,
            ),
            cache_dir=str(self.root / "cache"),
        )
        self[name] = run(config, self.root / name)
        return self[name]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return _Runs(tmp_path_factory.mktemp("planted"))


@pytest.mark.slow
def test_pal_a_reaches_the_bayes_optimal_accuracy(results):
    r = results["pal_a"]
    assert r["seen"]["accuracy"] >= r["bayes_optimal_accuracy"] - 0.05


@pytest.mark.slow
def test_pal_b_comes_close_to_the_bayes_optimal_accuracy(results):
    # Cosine scores are not the generator's squared distances, so PAL-B gets a looser bound.
    r = results["pal_b"]
    assert r["seen"]["accuracy"] >= r["bayes_optimal_accuracy"] - 0.08


def personalization_gap(r) -> float:
    """What personalization can win on this dataset: Bayes-optimal minus best single reward."""
    return r["bayes_optimal_accuracy"] - r["population_optimal_accuracy"]


@pytest.mark.slow
def test_bt_learns_the_majority_but_not_more(results):
    r = results["bt"]
    assert personalization_gap(r) >= 0.1  # the groups genuinely disagree
    assert 0.55 < r["seen"]["accuracy"] <= r["population_optimal_accuracy"] + SAMPLING_SLACK
    # No user state: every k gives the same unseen-user accuracy.
    assert len(set(r["unseen"]["accuracy_at_k"].values())) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name,share", [("pal_a", 0.5), ("pal_b", 0.4)])
def test_pal_beats_bt_on_seen_users(results, name, share):
    """PAL wins a good share of what personalization can win over the single reward."""
    bt = results["bt"]
    assert results[name]["seen"]["accuracy"] >= bt["seen"]["accuracy"] + share * personalization_gap(bt)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pal_a", "pal_b"])
@pytest.mark.parametrize("mode", ["random", "item_disjoint"])
def test_few_shot_inference_helps_unseen_users(results, name, mode):
    curve = {k: r for k, r in results[name]["unseen"]["by_mode"][mode].items() if r["accuracy"] is not None}
    shots = sorted(curve)
    first, last = curve[shots[0]], curve[shots[-1]]
    assert shots[0] == 1 and last["n_users"] >= 10
    assert last["accuracy"] >= first["accuracy"] + 0.03
    # ... and a personalized model beats the single reward in both modes.
    bt = results["bt"]
    assert last["accuracy"] >= bt["unseen"]["by_mode"][mode][shots[-1]]["accuracy"] + 0.4 * personalization_gap(bt)
