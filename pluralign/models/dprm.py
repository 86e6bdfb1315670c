"""DPRM: a distributional preference reward model of the whole population's vote share.

Follows "Aligning Crowd Feedback via Distributional Preference Reward Modeling"
(Li, Zhang, Dong, Goh, Tang & Liu, 2024). A crowd does not have *a* preference between
two responses; it has a vote share s = P(random annotator prefers a over b). DPRM treats
s as Beta-distributed, updates a Beta prior with the crowd's votes (its "Bayesian
updater"), and trains the reward model to predict that distribution under an
optimal-transport loss, which respects the order of the share axis (mass predicted at
0.6 when the truth is 0.7 costs less than mass at 0.1). No user state (S = 0).

Per response, [r, ℓ] = MLP([e_x; e_y]). For a pair, the predicted share distribution is

    m = σ(r_a − r_b),   κ = κ_min + exp(ℓ_a + ℓ_b),   s ~ Beta(κ m, κ (1 − m))

(swapping a and b gives the distribution of 1 − s, as it must). The target for a row whose
label y summarises n votes (n = its weight; one vote per row in per-user data) is the
posterior of the Beta(α₀, β₀) prior:

    s | votes ~ Beta(α₀ + n y, β₀ + n (1 − y))

Both Betas are discretised on C equal bins of [0, 1] (mass ∝ density at the bin centres:
DPRM's categorical over ordered preference levels), and the loss is the 1-D optimal
transport (earth mover's) distance with ground cost |s_i − s_j|, which on a line is the
L1 distance between the cumulative distributions:

    OT(P, Q) = Σ_c |F_P(c) − F_Q(c)| · (1 / C)

P(a ≻ b) for a random user is E[s] = m, so the shared surface's logit is r_a − r_b and
`reward` is r: the expected reward DPRM hands to policy optimisation.

Deviations from the paper, on purpose: comparisons instead of per-response ratings into
six labels (the ordered "levels" are bins of the vote share); the prior is a flat
Beta(α₀, β₀) instead of an LLM-elicited prior; with one vote per row (per-user data) the
posterior is that of one vote, and rows of a pair that many users voted on can be
aggregated first (`aggregate_votes`) to give DPRM the crowd posterior it is built for.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pluralign.data.format import Comparisons
from pluralign.models.base import Dims, PairBatch, PairEmbeddings, Tables, gather, weighted_metrics
from pluralign.models.dpl import PerResponseModel


@dataclasses.dataclass
class DPRMConfig:
    name: str = "dprm"
    hidden: list[int] = dataclasses.field(default_factory=lambda: [64])
    n_bins: int = 20  # C, ordered bins of the vote share for the OT loss
    prior_alpha: float = 1.0  # α₀ of the Beta prior on the vote share (flat by default)
    prior_beta: float = 1.0  # β₀
    min_concentration: float = 0.5  # κ_min
    max_log_concentration: float = 8.0  # caps ℓ_a + ℓ_b (κ ≤ κ_min + e^8)

    def __post_init__(self):
        if self.n_bins < 2:
            raise ValueError(f"model.n_bins must be >= 2, got {self.n_bins}")
        if self.prior_alpha <= 0 or self.prior_beta <= 0 or self.min_concentration <= 0:
            raise ValueError("model.prior_alpha, model.prior_beta and model.min_concentration must be > 0")


def beta_bins(alpha: jax.Array, beta: jax.Array, n_bins: int) -> jax.Array:
    """[B] Beta parameters -> [B, C] masses on C equal bins of [0, 1] (∝ density at the centres)."""
    centres = ((jnp.arange(n_bins, dtype=jnp.float32) + 0.5) / n_bins)[None, :]  # [1, C]
    log_density = (alpha[:, None] - 1.0) * jnp.log(centres) + (beta[:, None] - 1.0) * jnp.log1p(-centres)  # [B, C]
    return jax.nn.softmax(log_density, axis=-1)  # the Beta function cancels in the normalisation


def ot_distance(p: jax.Array, q: jax.Array) -> jax.Array:
    """[B, C], [B, C] -> [B] earth mover's distance on C ordered bins of [0, 1] (cost |s_i − s_j|)."""
    return jnp.sum(jnp.abs(jnp.cumsum(p, axis=-1) - jnp.cumsum(q, axis=-1)), axis=-1) / p.shape[-1]


class DPRM(PerResponseModel):
    logit_is_reward_difference = True

    def __init__(self, config: DPRMConfig, dims: Dims, *, rngs: nnx.Rngs):
        self.n_bins, self.prior = config.n_bins, (config.prior_alpha, config.prior_beta)
        self.min_concentration, self.max_log_concentration = config.min_concentration, config.max_log_concentration
        super().__init__(dims, config.hidden, 2, rngs=rngs)  # outputs [r, ℓ] per response

    def share_distribution(self, pair: PairEmbeddings) -> tuple[jax.Array, jax.Array]:
        """[B] Beta parameters (α, β) of the predicted vote share for a over b."""
        out_a, out_b = self.pair_outputs(pair)
        m = jax.nn.sigmoid(out_a[:, 0] - out_b[:, 0])
        kappa = self.min_concentration + jnp.exp(jnp.minimum(out_a[:, 1] + out_b[:, 1], self.max_log_concentration))
        return kappa * m, kappa * (1.0 - m)

    def pair_features(self, pair: PairEmbeddings) -> jax.Array:
        out_a, out_b = self.pair_outputs(pair)
        return out_a[:, 0] - out_b[:, 0]  # logit of E[s] = m

    def loss(self, tables: Tables, batch: PairBatch, rng: jax.Array | None) -> tuple[jax.Array, dict]:
        del rng
        pair = gather(tables, batch)
        alpha, beta = self.share_distribution(pair)
        # Bayesian updater: the row's weight counts its votes, its (soft) label their share for a.
        votes = batch.weight
        target = beta_bins(self.prior[0] + votes * batch.label, self.prior[1] + votes * (1.0 - batch.label), self.n_bins)
        ot = ot_distance(beta_bins(alpha, beta, self.n_bins), target)  # [B]
        present = (batch.weight > 0).astype(jnp.float32)
        ot_loss = jnp.sum(ot * present) / jnp.maximum(present.sum(), 1e-9)
        metrics = weighted_metrics(jnp.log(alpha) - jnp.log(beta), batch.label, batch.weight)
        return ot_loss, {**metrics, "ot": ot_loss}

    def reward(self, user_state, e_x, has_prompt, e_y):
        del user_state
        return self.outputs(e_x, has_prompt, e_y)[:, 0]


def aggregate_votes(comparisons: Comparisons) -> Comparisons:
    """One row per distinct (prompt, {a, b}) with label = the share of votes for a and
    weight = the number of votes (sum of weights): the crowd data DPRM's updater expects.
    The orientation of each pair is that of its first row; user is that row's user."""
    flip = comparisons.a > comparisons.b
    lo, hi = np.where(flip, comparisons.b, comparisons.a), np.where(flip, comparisons.a, comparisons.b)
    keys = np.stack([comparisons.prompt, lo, hi], axis=1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    votes_for_lo = np.where(flip, 1.0 - comparisons.label, comparisons.label) * comparisons.weight
    votes = np.bincount(inverse, weights=comparisons.weight)
    share_lo = np.bincount(inverse, weights=votes_for_lo) / np.maximum(votes, 1e-12)
    keep_flip = flip[first]
    return Comparisons.from_arrays(
        user=comparisons.user[first], prompt=comparisons.prompt[first], a=comparisons.a[first], b=comparisons.b[first],
        label=np.where(keep_flip, 1.0 - share_lo, share_lo), weight=votes,
    )
