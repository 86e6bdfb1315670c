"""MRM: meta-learned user-state initialisation with a robust objective (`train.meta=true`).

Follows "One Adapts to Any: Meta Reward Modeling for Personalized LLM Alignment" (Cai et al.,
2026): each user is a task; a few gradient steps on the user state from a shared, learned
initialisation φ₀ should fit that user (MAML), and the Robust Personalization Objective (RPO)
weighs the users the adapted model still gets wrong more heavily. For any model whose user
state is fitted (`PreferenceModel.fits_user_state`), `meta_class(Model, options)` builds a
model that is the same model plus φ₀, trained on

    loss = model.loss(batch)                                   (θ and the seen users' table, as before)
         + Σ_i ω_u(i) ℓ(head(φ_i^T, f_i), y_i) / Σ_i ω_u(i)     (meta loss on the batch's query pairs)
    φ_i^0 = φ₀,  φ_i^{t+1} = φ_i^t − α ∇_φ mean_{j ∈ C_i} ℓ(head(φ_i^t, f_j), y_j),  t < T
    ω_u = 1 + σ((L_u − q_{1−ρ}) / s)   (stop-gradient)

where C_i are `meta_support_size` other training comparisons of query i's user (drawn with
replacement, never the query itself; VPL's machinery: the `training_context`
`base.user_context` and the batch's training rows `TrainStep.rows`), L_u the mean adapted query loss of user u in the batch, q_{1−ρ} its
(1 − `robust_ratio`) quantile over the batch's users and s = `robust_smoothing`: users above
the quantile (the hardest ρ) get up to twice the weight, smoothly; ρ = 0 switches RPO off.
The gradient flows through the inner loop (second order, S is small). Few-shot inference
then starts from φ₀: it is the model's `population_user_state`, the MAP start and prior mean,
and the mean of the empirical-Bayes prior.

Choices of ours, documented: the seen users' table keeps its usual loss, so seen users are
still scored by their own states; RPO's weights are our reading of "emphasise hard users with
a ratio and a smoothing factor" (a sigmoid step at the batch's hard-user quantile).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from pluralign.models.base import Dims, PreferenceModel, Tables, TrainStep, UserContext, gather, preference_loss, user_context


@dataclasses.dataclass(frozen=True)
class MetaOptions:
    """The MRM options of `TrainConfig` (`train.meta_*`, `train.robust_*`)."""

    inner_steps: int = 3  # T
    inner_learning_rate: float = 0.5  # α, on the mean support loss
    support_size: int = 8  # |C_i|
    robust_ratio: float = 0.2  # ρ: share of the batch's users treated as hard; 0 = plain MAML
    robust_smoothing: float = 0.1  # s: width of the sigmoid step, in loss units

    @classmethod
    def of(cls, train_config) -> MetaOptions:
        return cls(
            inner_steps=train_config.meta_inner_steps, inner_learning_rate=train_config.meta_inner_learning_rate,
            support_size=train_config.meta_support_size, robust_ratio=train_config.robust_ratio,
            robust_smoothing=train_config.robust_smoothing,
        )


def robust_weights(user_loss: jax.Array, present: jax.Array, ratio: float, smoothing: float) -> jax.Array:
    """RPO weights ω_u = 1 + σ((L_u − q_{1−ρ}) / s) for the users `present` in the batch ([n_users] each)."""
    if ratio <= 0:
        return jnp.ones_like(user_loss)
    threshold = jnp.nanquantile(jnp.where(present, user_loss, jnp.nan), 1.0 - ratio)
    return jax.lax.stop_gradient(1.0 + jax.nn.sigmoid((user_loss - threshold) / smoothing))


def support_rows(ctx: UserContext, batch, rows: jax.Array, size: int, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """For each query (training rows `rows` [B]), `size` rows of `ctx.pairs` drawn with replacement
    from the same user's other training comparisons, and a mask [B, size] (False where the user has none)."""
    start, count = ctx.offsets[batch.user], ctx.offsets[batch.user + 1] - ctx.offsets[batch.user]  # [B]
    own = ctx.position[rows] - start  # [B] the query's own slot
    n_other = count - 1
    draw = jax.random.randint(rng, (batch.user.shape[0], size), 0, jnp.iinfo(jnp.int32).max) % jnp.maximum(n_other, 1)[:, None]
    within = draw + (draw >= own[:, None]).astype(draw.dtype)  # skip the query's own slot
    rows = jnp.clip(start[:, None] + within, 0, ctx.pairs.label.shape[0] - 1)
    return rows, jnp.broadcast_to((n_other > 0)[:, None], rows.shape)


class MetaLearned(PreferenceModel):
    """A fitted-state model plus a meta-learned initial user state φ₀ (built by `meta_class`)."""

    inner_class: type = PreferenceModel
    options: MetaOptions = MetaOptions()

    @classmethod
    def state_dim(cls, config, dims: Dims) -> int:
        return cls.inner_class.state_dim(config, dims)

    @classmethod
    def prepare_params(cls, config, dataset, train_items, params):
        """The inner family's stage before comparison training (DPA's), on the inner model's parameters."""
        params["inner"], summary = cls.inner_class.prepare_params(config, dataset, train_items, params["inner"])
        return params, summary

    def __init__(self, config, dims: Dims, *, rngs: nnx.Rngs):
        self.inner = self.inner_class(config, dims, rngs=rngs)
        if not self.inner.fits_user_state:
            raise ValueError(
                f"train.meta needs a model whose user state is fitted by optimisation; model {config.name!r} has "
                f"user_state_dim={self.inner.user_state_dim} and {'amortised' if self.inner.user_state_dim else 'no'} inference"
            )
        self.user_state_dim = self.inner.user_state_dim
        self.n_users = dims.n_users
        self.meta_init = nnx.Param(jnp.asarray(self.inner.population_user_state(), jnp.float32))  # φ₀ [S]

    # --- the inner model's surface, unchanged (preference_logit_matrix, describe_user_states and the
    # latent hooks keep PreferenceModel's defaults, as they did before they were declared there)
    def pair_features(self, pair):
        return self.inner.pair_features(pair)

    def pair_logits(self, user_state, features):
        return self.inner.pair_logits(user_state, features)

    def user_logits(self, user_state, features):
        return self.inner.user_logits(user_state, features)

    def reward(self, user_state, e_x, has_prompt, e_y):
        return self.inner.reward(user_state, e_x, has_prompt, e_y)

    def rewards(self, user_state, e_x, has_prompt, e_y):
        return self.inner.rewards(user_state, e_x, has_prompt, e_y)

    def user_table_state(self, users):
        return self.inner.user_table_state(users)

    def seen_states(self, tables, users, context=None):
        return self.inner.seen_states(tables, users)  # `context` is MRM's own (support sets), not the inner model's

    def canonical_user_state(self, user_state):
        return self.inner.canonical_user_state(user_state)

    def user_state_log_prior(self, user_state, prior_mean, strength):
        return self.inner.user_state_log_prior(user_state, prior_mean, strength)

    # --- what MRM changes
    def population_user_state(self, users=None):
        del users  # the meta-learned start replaces the seen users' average
        return self.meta_init[...]

    def infer_user(self, support_features, labels, weights, *, prior_mean=None, **options):
        prior_mean = self.meta_init[...] if prior_mean is None else prior_mean
        return self.inner.infer_user(support_features, labels, weights, prior_mean=prior_mean, **options)

    def adapt(self, support_features, labels, weights) -> jax.Array:
        """T gradient steps on φ from φ₀ on one user's support [C, ...] -> φ^T [S]."""

        def support_loss(phi):
            logits = self.inner.user_logits(phi, support_features)
            return preference_loss(logits, labels, weights).sum() / jnp.maximum(weights.sum(), 1e-9)

        phi = self.meta_init[...]
        for _ in range(self.options.inner_steps):  # T is small: unrolled
            phi = phi - self.options.inner_learning_rate * jax.grad(support_loss)(phi)
        return phi

    @classmethod
    def training_context(cls, train, n_users, *, seed):
        """Each user's training comparisons, to draw the inner loop's support sets from."""
        return user_context(train, n_users, seed=seed)

    def loss(self, tables: Tables, batch, rng):
        return self.inner.loss(tables, batch, rng)  # the meta term needs the training step: `training_loss`

    def training_loss(self, tables: Tables, batch, step: TrainStep):
        if step.context is None:
            raise ValueError("train.meta draws support sets from users' training comparisons: pass "
                             "TrainStep.context = training_context(...)")
        base_loss, metrics = self.inner.loss(tables, batch, step.rng)
        rows, mask = support_rows(step.context, batch, step.rows, self.options.support_size, jax.random.fold_in(step.rng, 17))
        support = jax.tree.map(lambda col: col[rows.reshape(-1)], step.context.pairs)
        feats = self.inner.pair_features(gather(tables, support))
        feats = jax.tree.map(lambda f: f.reshape(*rows.shape, *f.shape[1:]), feats)  # [B, C, ...]
        weights = jnp.where(mask, support.weight.reshape(rows.shape), 0.0)
        phi = jax.vmap(self.adapt)(feats, support.label.reshape(rows.shape), weights)  # [B, S]
        query_loss = preference_loss(self.inner.pair_logits(phi, self.inner.pair_features(gather(tables, batch))),
                                     batch.label, batch.weight)  # [B], weighted
        per_user = jax.ops.segment_sum(query_loss, batch.user, self.n_users)
        count = jax.ops.segment_sum(batch.weight, batch.user, self.n_users)
        present = count > 0
        user_loss = per_user / jnp.maximum(count, 1e-9)  # [n_users] L_u
        omega = robust_weights(user_loss, present, self.options.robust_ratio, self.options.robust_smoothing)[batch.user]
        meta_loss = jnp.sum(omega * query_loss) / jnp.maximum(jnp.sum(omega * batch.weight), 1e-9)
        metrics = dict(metrics, meta_loss=meta_loss)
        return base_loss + meta_loss, metrics


def meta_class(inner_class: type, options: MetaOptions) -> type:
    """`inner_class` with MRM training and a meta-learned initial user state."""
    attrs = {
        "inner_class": inner_class, "options": options,
        "logit_is_reward_difference": inner_class.logit_is_reward_difference,
        "uses_prior_strength": inner_class.uses_prior_strength,
        "has_scalar_reward": inner_class.has_scalar_reward,
    }
    return type(f"Meta{inner_class.__name__}", (MetaLearned,), attrs)
