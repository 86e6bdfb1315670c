"""DPA: a user is a direction in a multi-objective reward space (docs/design/equations.md).

Follows "Arithmetic Control of LLMs for Diverse User Preferences: Directional
Preference Alignment with Multi-Objective Rewards" (Wang et al., ACL 2024) and the
ArmoRM pipeline (RLHFlow/RLHF-Reward-Modeling, `armo-rm`), on frozen embeddings.

Stage 1 (before comparison training, `DPA.prepare_params`, on seen users' training items):
    r(y) = head(e_y) ∈ R^m regressed on attributes.npy (missing ratings masked): a ridge
    per attribute with its penalty chosen on validation items, or an MLP (optax);
    r'(y) = r(y) T,  T = I − e_v λᵀ  (verbosity decorrelation, `multi_objective`).
Stage 2 (comparison training, the shared trainer):
    user u: direction v_u = W_u / ‖W_u‖ ∈ S^{m−1},   R_u(y) = v_uᵀ r'(y)
    P(a ≻ b | u) = σ(exp(t) · v_uᵀ (r'(a) − r'(b)))
    gate (ArmoRM stage 2): w(x) = softmax(MLP(e_x) / T_g) ∈ Δ^{m−1},
    R_pop(x, y) = exp(g) · w(x)ᵀ r'(y), trained by the same BT loss on every comparison
    regardless of user: the prompt-conditioned population default.
    loss = BT(users) + gate_loss_weight · BT(gate).
Few-shot (θ frozen): v̂ = argmax_{v ∈ S^{m−1}} Σ_i w_i log σ(±exp(t) vᵀ Δr'_i) + κ μᵀ v, a
    logistic regression on reward differences on the unit sphere with a von Mises–Fisher prior
    around the seen users' mean direction μ; v = w/‖w‖, Adam in a lax.scan, vmapped over users.

Design choices: r is frozen in stage 2 (`freeze_attributes`, as ArmoRM freezes its regression
layer): the objectives keep their meaning, so directions stay interpretable and arithmetic
control means what it says. r depends on the response embedding only (attributes are per item
in the dataset format); the prompt enters through the gate. One learned logit scale exp(t) is
shared by all users (a direction has no length to carry confidence). The population user state
(the few-shot prior mean) is the seen users' mean direction, a vector; the gate, which depends
on the prompt, is trained alongside (its weights: `gate_weights`) but no prediction uses it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pluralign.models import multi_objective as mo
from pluralign.models.base import MLP, Dims, NullPrompt, PairEmbeddings, PreferenceModel, gather, weighted_metrics
from pluralign.numerics import unit


@dataclasses.dataclass
class DPAConfig:
    name: str = "dpa"
    n_attributes: int = 3  # m; must match the dataset's attributes.npy
    head: str = "ridge"  # ridge (closed form, linear) | mlp (optax)
    hidden: list[int] = dataclasses.field(default_factory=lambda: [64])  # MLP head's hidden layers
    ridge_alphas: list[float] = dataclasses.field(default_factory=lambda: list(mo.DEFAULT_ALPHAS))
    mlp_steps: int = 1000
    mlp_learning_rate: float = 3e-3
    mlp_weight_decay: float = 1e-4
    regression_val_fraction: float = 0.2  # training items held out to choose α / the MLP step
    freeze_attributes: bool = True  # r fixed after stage 1 (ArmoRM); False fine-tunes it with the BT loss
    decorrelate: str = "verbosity"  # attribute name (meta attribute_names) to decorrelate from; "" = off
    decorrelation_threshold: float = 0.03  # |Spearman ρ| bound on the reference (training) items
    gate_hidden: list[int] = dataclasses.field(default_factory=lambda: [64])
    gate_temperature: float = 1.0  # T_g: softmax(MLP(e_x) / T_g)
    gate_loss_weight: float = 1.0
    user_init_scale: float = 0.1  # std of the noise around 1/√m in the initial W_u

    def __post_init__(self):
        if self.head not in ("ridge", "mlp"):
            raise ValueError(f"model.head must be 'ridge' or 'mlp', got {self.head!r}")
        if self.n_attributes < 1 or self.gate_temperature <= 0 or self.gate_loss_weight < 0:
            raise ValueError("model.n_attributes >= 1, model.gate_temperature > 0, model.gate_loss_weight >= 0")


def _unit(v: jax.Array) -> jax.Array:
    return unit(v, 1e-9)


class DPA(PreferenceModel):
    logit_is_reward_difference = True

    @classmethod
    def state_dim(cls, config: DPAConfig, dims: Dims) -> int:
        return config.n_attributes  # m

    def __init__(self, config: DPAConfig, dims: Dims, *, rngs: nnx.Rngs):
        m = config.n_attributes
        self.user_state_dim = self.state_dim(config, dims)
        self.freeze_attributes = config.freeze_attributes
        self.gate_temperature = config.gate_temperature
        self.gate_loss_weight = config.gate_loss_weight
        hidden = tuple(config.hidden) if config.head == "mlp" else ()
        self.head = MLP(dims.dim, hidden, m, rngs=rngs)  # r; set by prepare_params
        self.reward_transform = nnx.Variable(jnp.eye(m))  # T; set by prepare_params
        # W, v_u = W_u/‖W_u‖: every user starts near the equal-weights direction 1/√m (small noise breaks
        # ties), so the seen users' mean direction, the few-shot prior, is sensible from the first epoch.
        init = 1.0 / math.sqrt(m) + config.user_init_scale * jax.random.normal(rngs.params(), (dims.n_users, m))
        self.user_directions = nnx.Param(init)
        self.logit_scale = nnx.Param(jnp.zeros(()))  # t
        self.null_prompt = NullPrompt(dims.dim, rngs=rngs)
        self.gate = MLP(dims.dim, tuple(config.gate_hidden), m, rngs=rngs)
        self.gate_logit_scale = nnx.Param(jnp.zeros(()))  # g

    # --- the multi-objective reward and the gate
    def attribute_rewards(self, e_y: jax.Array) -> jax.Array:
        """[B, D] -> [B, m] decorrelated objectives r'(y) = r(y) T."""
        r = self.head(e_y)
        if self.freeze_attributes:
            r = jax.lax.stop_gradient(r)
        return r @ jax.lax.stop_gradient(self.reward_transform[...])

    def gate_weights(self, e_x: jax.Array, has_prompt: jax.Array) -> jax.Array:
        """[B, D], [B] -> [B, m] non-negative weights w(x) summing to 1."""
        return jax.nn.softmax(self.gate(self.null_prompt(e_x, has_prompt)) / self.gate_temperature, axis=-1)

    # --- the shared surface
    def pair_features(self, pair: PairEmbeddings):
        r = self.attribute_rewards(jnp.concatenate([pair.e_a, pair.e_b], axis=0))  # [2B, m]
        r_a, r_b = jnp.split(r, 2)
        diff = r_a - r_b  # [B, m]
        w = self.gate_weights(pair.e_x, pair.has_prompt)  # [B, m]
        gate_logit = jnp.exp(self.gate_logit_scale[...]) * jnp.sum(w * diff, axis=-1)  # [B]
        return diff, gate_logit

    def pair_logits(self, user_state, features):
        diff, _ = features
        return jnp.exp(self.logit_scale[...]) * jnp.sum(_unit(user_state) * diff, axis=-1)

    def reward(self, user_state, e_x, has_prompt, e_y):
        del e_x, has_prompt  # a user's direction does not depend on the prompt
        return jnp.exp(self.logit_scale[...]) * jnp.sum(_unit(user_state) * self.attribute_rewards(e_y), axis=-1)

    def user_table_state(self, users):
        return _unit(self.user_directions[...][users])  # [B, m]

    def population_user_state(self, users=None):
        directions = self.user_directions[...] if users is None else self.user_directions[...][users]
        return _unit(_unit(directions).mean(axis=0))  # [m] the seen users' mean direction

    def canonical_user_state(self, user_state):
        return _unit(user_state)  # the logits depend on the direction only

    def user_state_log_prior(self, user_state, prior_mean, strength):
        # von Mises–Fisher: log p(v) = κ μᵀ v + const on the sphere.
        return strength * jnp.sum(_unit(user_state) * _unit(prior_mean))

    def infer_user(self, support_features, labels, weights, *, prior_mean=None, **options):
        """[U, m] unit directions; MAP of v = w/‖w‖ by Adam from the prior mean (base.fit_user_states)."""
        return _unit(super().infer_user(support_features, labels, weights, prior_mean=prior_mean, **options))

    def describe_user_states(self, states):
        return {"directions": (states, "v_u ∈ S^{m−1}: user u's unit direction over the m attribute rewards; "
                                       "R_u(y) = v_uᵀ r(y).")}

    def loss(self, tables, batch, rng):
        del rng
        features = self.pair_features(gather(tables, batch))
        metrics = weighted_metrics(self.pair_logits(self.user_table_state(batch.user), features), batch.label, batch.weight)
        gate = weighted_metrics(features[1], batch.label, batch.weight)
        metrics["gate_loss"], metrics["gate_accuracy"] = gate["loss"], gate["accuracy"]
        return metrics["loss"] + self.gate_loss_weight * gate["loss"], metrics

    # --- stage 1
    @classmethod
    def prepare_params(cls, config: DPAConfig, dataset, train_items: np.ndarray, params):
        """Stage 1 on the attributes of `train_items` (items of seen users' training pairs):
        fits r and T and writes them into the seed-stacked `params`. Returns (params, summary)."""
        if dataset.attributes is None:
            raise ValueError(f"model=dpa needs per-item attribute ratings (attributes.npy); dataset {dataset.name!r} has none")
        m = dataset.attributes.shape[1]
        if m != config.n_attributes:
            raise ValueError(f"model.n_attributes={config.n_attributes} but {dataset.name!r} has {m} attributes: set model.n_attributes={m}")
        names = list(dataset.meta.get("attribute_names") or [f"attribute_{j}" for j in range(m)])
        if config.decorrelate and config.decorrelate not in names:
            raise ValueError(f"model.decorrelate={config.decorrelate!r} is not one of the dataset's attributes {names}; use '' to switch it off")
        x = np.asarray(dataset.items[np.asarray(train_items)], np.float64)
        y = np.asarray(dataset.attributes[np.asarray(train_items)], np.float64)
        summary = {"attribute_names": names, "head": config.head, "n_items": int(len(x))}
        if config.head == "ridge":
            fit = mo.fit_ridge_heads(x, y, config.ridge_alphas, val_fraction=config.regression_val_fraction)
            linear = MLP(x.shape[1], (), m, rngs=nnx.Rngs(0))
            linear.layers[0].kernel[...] = jnp.asarray(fit.kernel, jnp.float32)
            linear.layers[0].bias[...] = jnp.asarray(fit.bias, jnp.float32)
            head_module = linear
            summary.update(ridge_alpha=fit.alpha.tolist(), val_mse=fit.val_mse.tolist())
        else:
            mlp, val_mse = mo.fit_mlp_head(
                x, y, tuple(config.hidden), steps=config.mlp_steps, learning_rate=config.mlp_learning_rate,
                weight_decay=config.mlp_weight_decay, val_fraction=config.regression_val_fraction,
            )
            summary["val_mse"] = val_mse
            head_module = mlp
        head = nnx.state(head_module)
        # The reference rewards for decorrelation come from the float32 head the model will run.
        rewards = np.asarray(head_module(jnp.asarray(x, jnp.float32)), np.float64)
        summary["train_r2"] = mo.masked_r2(rewards, y).tolist()
        penalties = np.zeros(m)
        if config.decorrelate:
            v = names.index(config.decorrelate)
            penalties = mo.decorrelation_penalties(rewards, v, config.decorrelation_threshold)
            transform = mo.reward_transform(penalties, v)
            adjusted = rewards @ transform
            summary["spearman_with_" + config.decorrelate] = [mo.spearman(adjusted[:, i], rewards[:, v]) for i in range(m)]
        else:
            transform = np.eye(m)
        summary["penalties"] = penalties.tolist()

        def fill(old, new):  # broadcast one fitted value to every seed's copy
            return jnp.broadcast_to(jnp.asarray(new, old.dtype), old.shape)

        params["head"] = jax.tree.map(fill, params["head"], head)
        params["reward_transform"] = jax.tree.map(lambda old: fill(old, transform), params["reward_transform"])
        return params, summary


def rank_responses(model: DPA, direction, e_y: jax.Array) -> jax.Array:
    """Arithmetic control: [N] indices of responses e_y [N, D], best first, under a direction [m]
    (any non-zero vector; it is normalised), e.g. `multi_objective.direction_from_angle`."""
    return jnp.argsort(-(model.attribute_rewards(e_y) @ _unit(jnp.asarray(direction, jnp.float32))))


def best_of_n_by_direction(model: DPA, direction, candidates: jax.Array) -> jax.Array:
    """[P] index of the best of n candidates [P, n, D] per prompt under a direction [m]."""
    P, n, D = candidates.shape
    r = model.attribute_rewards(candidates.reshape(P * n, D)).reshape(P, n, -1)
    return jnp.argmax(r @ _unit(jnp.asarray(direction, jnp.float32)), axis=1)
