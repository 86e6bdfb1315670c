"""DPL: distributional preference learning, a population model that admits hidden context.

Follows "Distributional Preference Learning: Understanding and Accounting for Hidden
Context in RLHF" (Siththaranjan, Laidlaw & Hadfield-Menell, ICLR 2024;
cassidylaidlaw/hidden-context), the baselines the VPL paper compares against. Instead of
one reward per response, DPL learns a *distribution* of rewards over the population of
annotators, whose spread flags responses on which annotators disagree. No user state
(S = 0): every user gets the population's answer, so few-shot accuracy is flat in k.

Mean-variance (`dpl_mv`): each response gets r(x, y) ~ N(μ(x, y), σ(x, y)²), with
[μ, ρ] = MLP([e_x; e_y]), σ = softplus(ρ), and

    P(a ≻ b | x) = P(r_a > r_b) = Φ((μ_a − μ_b) / sqrt(σ_a² + σ_b² + ε))

trained by the cross-entropy of that probability, plus `variance_penalty`·(σ_a² + σ_b²).

Categorical (`dpl_cat`): each response gets a distribution p(· | x, y) = softmax(MLP([e_x; e_y]))
over n atoms v_i = i / (n − 1) on [0, 1], and

    P(a ≻ b | x) = Σ_ij p_a(i) p_b(j) C_ij,   C_ij = 1[v_i > v_j] + ½·1[i = j]

trained by its cross-entropy plus `entropy_coeff`·Σ_i p̄_i log p̄_i, where p̄ is the batch's
mean atom distribution (a term that keeps every atom in use).

The logit passed to the shared surface is log P − log(1 − P), so the shared cross-entropy
is exactly DPL's negative log-likelihood. `reward` is E[r]: μ, or Σ_i p(i) v_i.

Deviations from the reference code, on purpose: the probit is computed exactly
(`log_ndtr`); the reference replaces Φ(z) by σ(√(2π)·z), which `link="reference"` restores.
σ = softplus(ρ) as in the DPL LLM trainer (the copy in WEIRDLabUW/vpl_llm uses σ = exp(ρ)), plus
a small floor `min_std` so z stays finite.
One pooled vector per text (frozen embeddings) rather than a fine-tuned LM; the entropy
term's batch mean leaves padding rows out.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.scipy.special import log_ndtr

from pluralign.models.base import MLP, Dims, NullPrompt, PairBatch, PairEmbeddings, PreferenceModel, Tables, gather, weighted_metrics


@dataclasses.dataclass
class DPLConfig:
    name: str = "dpl_mv"  # dpl_mv (mean-variance) | dpl_cat (categorical)
    hidden: list[int] = dataclasses.field(default_factory=lambda: [64])
    variance_penalty: float = 0.0  # dpl_mv: λ·(σ_a² + σ_b²) in the training loss (reference default 0)
    link: str = "probit"  # dpl_mv: probit (exact Φ) | reference (σ(√(2π)·z), as in the reference code)
    min_std: float = 1e-3  # dpl_mv: σ floor, keeps z finite
    n_atoms: int = 10  # dpl_cat: number of reward atoms on [0, 1] (reference default 10)
    entropy_coeff: float = 0.1  # dpl_cat: weight of the atom-usage entropy term (reference default 0.1)

    def __post_init__(self):
        if self.link not in ("probit", "reference"):
            raise ValueError(f"model.link must be probit or reference, got {self.link!r}")
        if self.n_atoms < 2:
            raise ValueError(f"model.n_atoms must be >= 2, got {self.n_atoms}")


class PerResponseModel(PreferenceModel):
    """A population model on one per-response network [ẽ_x; e_y] -> `n_out` numbers (DPL, DPRM):
    no user state, and the pair's features are its whole logit."""

    user_state_dim = 0

    def __init__(self, dims: Dims, hidden, n_out: int, *, rngs: nnx.Rngs):
        self.null_prompt = NullPrompt(dims.dim, rngs=rngs)
        self.head = MLP(2 * dims.dim, tuple(hidden), n_out, rngs=rngs)

    def outputs(self, e_x, has_prompt, e_y) -> jax.Array:
        """[B, D], [B], [B, D] -> [B, n_out], the network on [ẽ_x; e_y]."""
        return self.head(jnp.concatenate([self.null_prompt(e_x, has_prompt), e_y], axis=-1))

    def pair_outputs(self, pair: PairEmbeddings) -> tuple[jax.Array, jax.Array]:
        """[B, n_out] outputs for a and for b, both responses through the head as one [2B] batch."""
        e_x = jnp.concatenate([pair.e_x, pair.e_x], axis=0)
        has_prompt = jnp.concatenate([pair.has_prompt, pair.has_prompt], axis=0)
        out = self.outputs(e_x, has_prompt, jnp.concatenate([pair.e_a, pair.e_b], axis=0))
        return jnp.split(out, 2)

    def pair_logits(self, user_state: jax.Array, features: jax.Array) -> jax.Array:
        del user_state  # a population model: the logit is the same for every user
        return features


class _DPLBase(PerResponseModel):
    def __init__(self, config: DPLConfig, dims: Dims, n_out: int, *, rngs: nnx.Rngs):
        # Plain scalars, not the config object: NNX keeps them as static, hashable graph data.
        self.variance_penalty, self.link, self.min_std = config.variance_penalty, config.link, config.min_std
        self.n_atoms, self.entropy_coeff = config.n_atoms, config.entropy_coeff
        super().__init__(dims, config.hidden, n_out, rngs=rngs)

    def loss(self, tables: Tables, batch: PairBatch, rng: jax.Array | None) -> tuple[jax.Array, dict]:
        del rng
        out_a, out_b = self.pair_outputs(gather(tables, batch))
        metrics = weighted_metrics(self._logit(out_a, out_b), batch.label, batch.weight)
        penalty = self._penalty(out_a, out_b, batch.weight)
        return metrics["loss"] + penalty, {**metrics, "penalty": penalty}

    def pair_features(self, pair: PairEmbeddings) -> jax.Array:
        return self._logit(*self.pair_outputs(pair))  # [B]


class DPLMeanVariance(_DPLBase):
    def __init__(self, config: DPLConfig, dims: Dims, *, rngs: nnx.Rngs):
        super().__init__(config, dims, 2, rngs=rngs)

    def _mean_std(self, out: jax.Array) -> tuple[jax.Array, jax.Array]:
        return out[:, 0], jax.nn.softplus(out[:, 1]) + self.min_std  # μ, σ: [B]

    def _logit(self, out_a, out_b) -> jax.Array:
        (mu_a, std_a), (mu_b, std_b) = self._mean_std(out_a), self._mean_std(out_b)
        z = (mu_a - mu_b) / jnp.sqrt(jnp.square(std_a) + jnp.square(std_b))  # [B]
        if self.link == "reference":
            return math.sqrt(2 * math.pi) * z
        # logit Φ(z) = log Φ(z) − log Φ(−z), stable in both tails.
        return log_ndtr(z) - log_ndtr(-z)

    def _penalty(self, out_a, out_b, weight) -> jax.Array:
        var = jnp.square(self._mean_std(out_a)[1]) + jnp.square(self._mean_std(out_b)[1])
        return self.variance_penalty * jnp.sum(var * weight) / jnp.maximum(weight.sum(), 1e-9)

    def reward_distribution(self, e_x, has_prompt, e_y) -> tuple[jax.Array, jax.Array]:
        """[B] mean and standard deviation of the population's reward for response y."""
        return self._mean_std(self.outputs(e_x, has_prompt, e_y))

    def reward(self, user_state, e_x, has_prompt, e_y):
        del user_state
        return self.reward_distribution(e_x, has_prompt, e_y)[0]


class DPLCategorical(_DPLBase):
    def __init__(self, config: DPLConfig, dims: Dims, *, rngs: nnx.Rngs):
        super().__init__(config, dims, config.n_atoms, rngs=rngs)

    def _atoms(self) -> jax.Array:
        return jnp.linspace(0.0, 1.0, self.n_atoms)  # [n]

    def _logit(self, out_a, out_b) -> jax.Array:
        v = self._atoms()
        comparison = (v[:, None] > v[None, :]).astype(jnp.float32) + 0.5 * jnp.eye(v.shape[0])  # C [n, n]
        p_a, p_b = jax.nn.softmax(out_a, axis=-1), jax.nn.softmax(out_b, axis=-1)  # [B, n]
        prob = jnp.einsum("bi,ij,bj->b", p_a, comparison, p_b)  # P(a ≻ b): [B]
        prob = jnp.clip(prob, 1e-6, 1.0 - 1e-6)
        return jnp.log(prob) - jnp.log1p(-prob)

    def _penalty(self, out_a, out_b, weight) -> jax.Array:
        dists = jax.nn.softmax(jnp.concatenate([out_a, out_b], axis=0), axis=-1)  # [2B, n]
        w = jnp.concatenate([weight, weight])[:, None]
        mean_dist = jnp.sum(dists * w, axis=0) / jnp.maximum(w.sum(), 1e-9)  # p̄ [n]
        return self.entropy_coeff * jnp.sum(mean_dist * jnp.log(mean_dist + 1e-12))

    def reward_distribution(self, e_x, has_prompt, e_y) -> tuple[jax.Array, jax.Array]:
        """[B] mean and standard deviation of the population's reward for response y."""
        p = jax.nn.softmax(self.outputs(e_x, has_prompt, e_y), axis=-1)  # [B, n]
        v = self._atoms()
        mean = p @ v
        return mean, jnp.sqrt(jnp.maximum(p @ jnp.square(v) - jnp.square(mean), 0.0))

    def reward(self, user_state, e_x, has_prompt, e_y):
        del user_state
        return self.reward_distribution(e_x, has_prompt, e_y)[0]
