"""The surface every pluralign preference model shares.

A model is "shared parameters θ + a per-user state φ_u" (docs/design/architecture.md). Each model is a
Flax NNX module that splits a comparison's logit into two parts:

  features = model.pair_features(pair)          # depends on θ only, batched over pairs
  logit    = model.pair_logits(user_state, features)

so that few-shot inference of φ_u for a new user (θ frozen) computes the expensive,
user-independent features once and then only re-runs the cheap user head. The
functional API below (`init`, `logits`, `loss`, `reward`) is what the trainer,
the evaluation protocol and later models call. `PreferenceModel.infer_user` defaults
to MAP fitting of the user state (`fit_user_states`), shared by every model whose
state is fitted rather than amortised; `pluralign.evaluate.fewshot` calls it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from pluralign.numerics import optimizer_update


@struct.dataclass
class Tables:
    """Embedding tables kept on device; batches refer to their rows by index."""

    items: jax.Array  # [n_items, D] float16 | float32
    prompts: jax.Array  # [max(n_prompts, 1), D]; a dummy row when the data has no prompts


@struct.dataclass
class PairBatch:
    """A batch of comparisons as indices into `Tables` (docs/design/architecture.md, Training)."""

    user: jax.Array  # int32 [B]
    prompt: jax.Array  # int32 [B], -1 = no prompt
    a: jax.Array  # int32 [B]
    b: jax.Array  # int32 [B]
    label: jax.Array  # float32 [B], P(a ≻ b)
    weight: jax.Array  # float32 [B]; 0 marks padding


@struct.dataclass
class TrainStep:
    """What the trainer knows of one optimiser step besides the batch (`training_loss`)."""

    rng: jax.Array  # this step's key: fold_in(fold_in(seed_key, epoch), step)
    step: jax.Array  # int32, the global optimiser step (for schedules inside a loss, e.g. VPL's β warm-up)
    rows: jax.Array  # int32 [B], each comparison's row in the training set
    context: Any = None  # the model's `training_context`, built once before training; None for most models


@struct.dataclass
class PairEmbeddings:
    """A batch of comparisons with embeddings gathered (float32)."""

    e_x: jax.Array  # [B, D], zeros where there is no prompt
    has_prompt: jax.Array  # bool [B]
    e_a: jax.Array  # [B, D]
    e_b: jax.Array  # [B, D]


@struct.dataclass
class UserContext:
    """The training comparisons sorted by user (CSR), for models that read a user's other
    comparisons inside the jitted step (VPL's context sets, MRM's support sets): such a model's
    `training_context`."""

    pairs: PairBatch  # [N] training comparisons, grouped by user
    offsets: jax.Array  # int32 [n_users + 1]: user u's comparisons are pairs[offsets[u]:offsets[u + 1]]
    position: jax.Array  # int32 [N]: training row i sits at pairs[position[i]]


def user_context(train: PairBatch, n_users: int, *, seed: int) -> UserContext:
    """Groups training comparisons by user; within a user the order is a fixed random
    permutation drawn with `seed`, so "a user's first c comparisons" is an unbiased subset."""
    n = train.label.shape[0]
    shuffled = jax.random.permutation(jax.random.PRNGKey(seed), n)
    order = shuffled[jnp.argsort(train.user[shuffled], stable=True)]  # [N]
    counts = jnp.bincount(train.user, length=n_users)
    offsets = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(counts).astype(jnp.int32)])
    position = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return UserContext(pairs=jax.tree.map(lambda col: col[order], train), offsets=offsets, position=position)


@dataclasses.dataclass(frozen=True)
class Dims:
    """Sizes a model needs at construction."""

    dim: int  # D, the embedding size
    n_users: int  # number of user rows in the seen-user state table


def gather(tables: Tables, batch: PairBatch) -> PairEmbeddings:
    """Looks the batch's embeddings up inside the jitted step (docs/design/architecture.md, Training)."""
    has_prompt = batch.prompt >= 0
    e_x = tables.prompts[jnp.maximum(batch.prompt, 0)].astype(jnp.float32)
    e_x = jnp.where(has_prompt[:, None], e_x, 0.0)
    return PairEmbeddings(
        e_x=e_x,
        has_prompt=has_prompt,
        e_a=tables.items[batch.a].astype(jnp.float32),
        e_b=tables.items[batch.b].astype(jnp.float32),
    )


class PreferenceModel(nnx.Module):
    """Base class: every hook the framework calls on a model is declared here, with a default.

    A new family subclasses this in one file, implements `pair_features`, `pair_logits` and
    `reward`, sets the class flags below that differ from the defaults, and overrides
    `state_dim` if it has a user state. Shapes: B pairs, D embedding size, S = `user_state_dim`.
    """

    # S, the size of φ_u. A class-level 0 for models without a user state (BT); a model whose S
    # depends on its config overrides `state_dim` and sets `self.user_state_dim =
    # self.state_dim(config, dims)` in `__init__`, so tools can read S from the class and config
    # (`state_dim`) or from an instance (this attribute), and the two agree.
    user_state_dim: int = 0
    # False: `infer_user` ignores the prior strength, so the evaluation does not fit one (only its
    # gate is left). VPL's amortised encoder reads it as its prior's precision (`vpl.rescaled_prior`).
    uses_prior_strength: ClassVar[bool] = True
    # True: pair_logits(u, a, b) = reward(u, a) − reward(u, b), so a preference matrix over n
    # responses needs n rewards (`preference_logit_matrix`); False: its pair logits on n² pairs.
    logit_is_reward_difference: ClassVar[bool] = False
    # False: the model has no scalar reward (GPM: preferences may be cyclic); `reward` raises and
    # users rank responses by average preference (`pluralign.models.ranking`).
    has_scalar_reward: ClassVar[bool] = True
    # True: the user state parametrises a posterior over a latent z that `sample_latents` draws
    # from and `latent_logits` decodes (VPL); online elicitation samples it instead of a Laplace
    # approximation around the fitted state.
    has_latent_posterior: ClassVar[bool] = False
    # True where a user's state is read by an encoder trained on the seen users' own training pairs
    # (VPL's amortised q(z | C)). Scoring such a model with those pairs as a calibration user's
    # support scores the encoder on what it was trained to read: optimistic, so the evaluation's
    # `eval.calibration_support=auto` calibrates it on held-out support (`pluralign.run`).
    amortized_inference: ClassVar[bool] = False
    # True where the population state's prediction is a fit of the population's *marginal*
    # preference, P(a ≻ b) over users: the shared reward of a population-anchored model trained
    # first as BT (lore, bt_residual with their population stage). Its σ(r) already averages over
    # users, so a new user with no answers gets it as it is, not the prior predictive, which would
    # temper it again by the users' spread (`fewshot.make_adapt_and_predict`).
    population_is_marginal: bool = False

    @classmethod
    def state_dim(cls, config: Any, dims: Dims) -> int:
        """S for a model built from `config` and `dims`, without building it. Default: the
        class-level `user_state_dim` (0: no user state)."""
        del config, dims
        return cls.user_state_dim

    @classmethod
    def population_stage(cls, config: Any) -> Any:
        """A `pluralign.models.bt.PopulationStage` where the model's shared reward is BT's and is
        trained first, as BT, with its own early stopping, then frozen while the user terms train
        (`pluralign.run.train_population`); None (the default) for models without one."""
        del config
        return None

    @classmethod
    def prepare_params(cls, config: Any, dataset: Any, train_items: Any, params: Any) -> tuple[Any, dict | None]:
        """A stage before comparison training (DPA's attribute regression), run by
        `pluralign.run` once on the seed-stacked initial `params`, with `train_items` the items
        of seen users' training pairs. Returns (params, a summary for results.json or None).
        Default: no stage, `(params, None)` unchanged."""
        del config, dataset, train_items
        return params, None

    @property
    def fits_user_state(self) -> bool:
        """True where an unseen user's state is fitted by optimisation with θ frozen (S > 0 and
        `uses_prior_strength`): these models get empirical-Bayes few-shot inference
        (`empirical_prior`, `laplace_posterior`) and the MRM training option. False for BT (no
        state) and for amortised inference (VPL's encoder is its own posterior)."""
        return self.user_state_dim > 0 and self.uses_prior_strength

    def pair_features(self, pair: PairEmbeddings) -> Any:
        """User-independent part of the logit: a pytree of [B, ...] arrays."""
        raise NotImplementedError

    def pair_logits(self, user_state: jax.Array, features: Any) -> jax.Array:
        """[B, S] user states and [B, ...] features -> [B] logits of P(a ≻ b)."""
        raise NotImplementedError

    def user_logits(self, user_state: jax.Array, features: Any) -> jax.Array:
        """[S] one user's state and [k, ...] features of that user's pairs -> [k] logits: what a
        few-shot fit evaluates at every step (~100 per support pair). Default: `pair_logits` with the
        state repeated on every pair; a model whose logit splits into a part of the pair alone and a
        part of the user overrides it to compute the user's part once (PAL: its ideal point or
        direction), the pair's part being the same at every step of the fit."""
        k = jax.tree.leaves(features)[0].shape[0]
        return self.pair_logits(jnp.broadcast_to(user_state, (k, user_state.shape[-1])), features)

    def reward(
        self, user_state: jax.Array, e_x: jax.Array, has_prompt: jax.Array, e_y: jax.Array
    ) -> jax.Array:
        """[B, S], [B, D], [B], [B, D] -> [B] scalar reward of response y for each user."""
        raise NotImplementedError

    def rewards(
        self, user_state: jax.Array, e_x: jax.Array, has_prompt: jax.Array, e_y: jax.Array
    ) -> jax.Array:
        """[B, S], [B, D], [B], [B, N, D] -> [B, N]: N responses to each of B (user, prompt) rows.
        Default: `reward` on every response; models whose reward splits into a prompt part and
        a response part override it to compute the prompt part once per row."""
        B, N, D = e_y.shape
        rep = lambda x: jnp.repeat(x, N, axis=0)  # noqa: E731
        return self.reward(rep(user_state), rep(e_x), rep(has_prompt), e_y.reshape(B * N, D)).reshape(B, N)

    def user_table_state(self, users: jax.Array) -> jax.Array:
        """[B] user ids -> [B, S] the states the model holds for seen users: rows of its learned
        user-state table (a parameter), the samples of the empirical-Bayes prior. A model that keeps
        no table (VPL) returns its prior. Compare `seen_states`, which computes the states seen
        users are scored with."""
        return jnp.zeros((users.shape[0], self.user_state_dim), jnp.float32)

    def seen_states(self, tables: Tables, users: jax.Array, context: Any = None) -> jax.Array:
        """[B] seen user ids -> [B, S] states used to score their comparisons; `context` is the
        model's `training_context` (None where it has none). Default: the learned table rows
        (`user_table_state`); VPL encodes each user's training comparisons."""
        del tables, context
        return self.user_table_state(users)

    def population_user_state(self, users: jax.Array | None = None) -> jax.Array:
        """[S] the state of an average user among `users` (seen users; None = every row of the
        user table): the prior mean for few-shot inference."""
        return jnp.zeros((self.user_state_dim,), jnp.float32)

    def user_state_log_prior(self, user_state: jax.Array, prior_mean: jax.Array, strength: float) -> jax.Array:
        """log p(φ) up to a constant, for MAP few-shot inference: Gaussian around the prior mean."""
        return -0.5 * strength * jnp.sum(jnp.square(user_state - prior_mean))

    def infer_user(
        self, support_features: Any, labels: jax.Array, weights: jax.Array, *, prior_mean: jax.Array | None = None, **options
    ) -> jax.Array:
        """Few-shot user states [U, S] from support features [U, k, ...] with θ frozen.

        Default: MAP by gradient descent (`fit_user_states`) around `prior_mean` (default:
        `population_user_state()`). Models with amortised inference (VPL) override this.
        """
        prior_mean = self.population_user_state() if prior_mean is None else prior_mean
        return fit_user_states(self, support_features, labels, weights, prior_mean, **options)

    def residual_block(self) -> np.ndarray | None:
        """[S] bool: the state coordinates of a second block whose prior variance the evaluation
        fits separately from the rest (`empirical_prior`'s `residual_ratio`): lore's full-rank
        residual v_u beside its learned basis weights w_u. None (the default): one block, the
        fitted prior's shape is kept as it is."""
        return None

    def canonical_user_state(self, user_state: jax.Array) -> jax.Array:
        """[..., S] -> the same states in coordinates where a Gaussian over users is meaningful,
        for the empirical-Bayes prior (`empirical_prior`). Must not change the model's logits.
        Default: the identity. Softmax-weight models (PAL, personalized GPM) centre their logits
        (softmax is shift-invariant, so the uncentred spread is partly meaningless); DPA, whose
        state is a direction, normalises it."""
        return user_state

    def preference_logit_matrix(self, user_state: jax.Array, e_x: jax.Array, has_prompt: jax.Array, e_items: jax.Array) -> jax.Array:
        """[S], [D] (zeros if no prompt), [] bool, [n, D] -> [n, n] logits of P(i ≻ j | x, u).

        Default: r_i − r_j from one `rewards` call where `logit_is_reward_difference`, else the
        model's own pair logits on all n² ordered pairs (exact for every model). GPM overrides it
        with one matrix product."""
        if self.logit_is_reward_difference:
            return reward_logit_matrix(self, user_state, e_x, has_prompt, e_items)
        return pair_logit_matrix(self, user_state, e_x, has_prompt, e_items)

    def sample_latents(self, user_state: jax.Array, rng: jax.Array, n_samples: int) -> jax.Array:
        """[..., S] -> [n_samples, ..., L] draws of the latent the state describes, for models with
        `has_latent_posterior` (VPL: z ~ q(z | C)). Default: the state is the latent, known
        exactly (n copies of it)."""
        del rng
        return jnp.broadcast_to(user_state[None], (n_samples, *user_state.shape))

    def latent_logits(self, z: jax.Array, features: Any) -> jax.Array:
        """Logits of P(a ≻ b | z) for latents z [..., L] (from `sample_latents`) against pair
        features [..., ·]. Default: the latent is the user state, so `pair_logits`."""
        return self.pair_logits(z, features)

    def describe_user_states(self, states: jax.Array) -> dict[str, tuple[jax.Array, str]]:
        """{space name: (array [U, ...], what it means)} for [U, S] user states: the spaces
        `pluralign.export.users` writes (one `.npy` each). Default: the raw state φ_u."""
        name = type(self).__name__
        if self.user_state_dim == 0:
            return {"user_state": (states, f"{name} has no user state (S = 0): every user gets the population's "
                                           "preferences, so there is nothing per user to export.")}
        return {"user_state": (states, f"φ_u ∈ R^{self.user_state_dim}, the model's learned per-user state "
                                       f"({name}); see the model's docstring for its role.")}

    @classmethod
    def training_context(cls, train: PairBatch, n_users: int, *, seed: int) -> Any:
        """What the model reads besides the batch, in its training step (`TrainStep.context`) and
        when scoring seen users (`seen_states`): built once from the training comparisons `train`
        (row i = training row i, `TrainStep.rows`); `seed` draws any order it needs. A pytree of
        device arrays, or None (the default: nothing). VPL and MRM return the comparisons grouped
        by user (`user_context`), to draw a comparison's context or support set from its user's
        other training comparisons; such a model needs the embedding tables on the device."""
        del train, n_users, seed
        return None

    def loss(self, tables: Tables, batch: PairBatch, rng: jax.Array | None) -> tuple[jax.Array, dict]:
        """Training objective on a batch: (scalar, metrics), metrics["loss"] the weighted mean
        preference cross-entropy (`weighted_metrics`). Default: that loss (`mean_preference_loss`)."""
        del rng  # deterministic by default
        return mean_preference_loss(self, tables, batch)

    def training_loss(self, tables: Tables, batch: PairBatch, step: TrainStep) -> tuple[jax.Array, dict]:
        """The objective the trainer minimises in one optimiser step, as `loss`. Default:
        `loss(tables, batch, step.rng)`; a model that reads its `training_context`, the step
        counter or the batch's training rows (VPL, MRM) overrides this instead."""
        return self.loss(tables, batch, step.rng)


class NullPrompt(nnx.Module):
    """A learned stand-in for e_x on comparisons with no prompt (docs/design/equations.md, last paragraph)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.vector = nnx.Param(0.02 * jax.random.normal(rngs.params(), (dim,)))

    def __call__(self, e_x: jax.Array, has_prompt: jax.Array) -> jax.Array:
        return jnp.where(has_prompt[:, None], e_x, self.vector[...][None, :])


class MLP(nnx.Module):
    """Dense layers with GELU between them; `hidden=()` makes it one linear map."""

    def __init__(self, d_in: int, hidden: tuple[int, ...], d_out: int, *, rngs: nnx.Rngs):
        sizes = (d_in, *hidden, d_out)
        self.layers = nnx.List([nnx.Linear(i, o, rngs=rngs) for i, o in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.after_first_layer(self.layers[0](x))

    def after_first_layer(self, pre: jax.Array) -> jax.Array:
        """The rest of the network given the first layer's pre-activation (lets callers
        compute that affine map in parts, e.g. a shared prompt half once per pair)."""
        if len(self.layers) == 1:
            return pre
        x = jax.nn.gelu(pre)
        for layer in self.layers[1:-1]:
            x = jax.nn.gelu(layer(x))
        return self.layers[-1](x)


def preference_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Per-example cross-entropy of P(a ≻ b) = σ(logit) against a (soft) label, weighted.

    -[y log σ(l) + (1 - y) log σ(-l)], with log(1 - σ(l)) = log σ(-l) for stability.
    """
    return -weights * (labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))


def logits(model: PreferenceModel, user_state: jax.Array, pair: PairEmbeddings) -> jax.Array:
    """[B] logits of P(a ≻ b | user) for explicit user states [B, S]."""
    return model.pair_logits(user_state, model.pair_features(pair))


def seen_logits(model: PreferenceModel, tables: Tables, batch: PairBatch, context: Any = None) -> jax.Array:
    """[B] logits for comparisons of seen users, using their learned states (`seen_states`;
    `context`: the model's `training_context`)."""
    return logits(model, model.seen_states(tables, batch.user, context), gather(tables, batch))


def loss(model: PreferenceModel, tables: Tables, batch: PairBatch, rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """The training objective on a batch of seen-user comparisons: (scalar, metrics).

    Delegates to `model.loss`, so a family with its own objective (a KL term, sampled
    contexts, dropout) overrides that method and still trains in the shared step.
    `rng` is this step's key: `fold_in(fold_in(seed_key, epoch), step)`.
    """
    return model.loss(tables, batch, rng)


def weighted_metrics(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> dict:
    """Weighted mean preference loss and accuracy of [N] logits (inside jit)."""
    total_weight = jnp.maximum(weights.sum(), 1e-9)
    correct = ((logits > 0) == (labels > 0.5)).astype(weights.dtype) * weights
    return {
        "loss": preference_loss(logits, labels, weights).sum() / total_weight,
        "accuracy": correct.sum() / total_weight,
    }


def mean_preference_loss(model: PreferenceModel, tables: Tables, batch: PairBatch) -> tuple[jax.Array, dict]:
    """Weighted mean preference loss over a batch of seen-user comparisons, plus metrics."""
    metrics = weighted_metrics(seen_logits(model, tables, batch), batch.label, batch.weight)
    return metrics["loss"], metrics


def reward(model: PreferenceModel, user_state: jax.Array, e_x, has_prompt, e_y) -> jax.Array:
    """[B] rewards of responses e_y for users in states user_state."""
    return model.reward(user_state, e_x, has_prompt, e_y)


def reward_logit_matrix(model: PreferenceModel, user_state, e_x, has_prompt, e_items) -> jax.Array:
    """[S], [D], [] bool, [n, D] -> [n, n] logits r_i − r_j from one `rewards` call: the n responses
    form one (user, prompt) row, so models that can compute the prompt part once per row do."""
    r = model.rewards(user_state[None], e_x[None], jnp.asarray(has_prompt)[None], e_items[None])[0]  # [n]
    return r[:, None] - r[None, :]


def pair_logit_matrix(model: PreferenceModel, user_state, e_x, has_prompt, e_items) -> jax.Array:
    """[n, n] the model's own pair logits on all n² ordered pairs (exact for every model)."""
    n, dim = e_items.shape
    i, j = jnp.divmod(jnp.arange(n * n), n)
    pair = PairEmbeddings(
        e_x=jnp.broadcast_to(e_x, (n * n, dim)), has_prompt=jnp.broadcast_to(has_prompt, (n * n,)), e_a=e_items[i], e_b=e_items[j]
    )
    logits = model.user_logits(user_state, model.pair_features(pair))
    return logits.reshape(n, n)


def init(model_cls, config, dims: Dims, rng: jax.Array) -> tuple[nnx.GraphDef, nnx.State]:
    """Builds a model and splits it into a static graph and a pytree of parameters."""
    return nnx.split(model_cls(config, dims, rngs=nnx.Rngs(rng)))


def fit_user_states(
    model: PreferenceModel,
    features: Any,
    labels: jax.Array,
    weights: jax.Array,
    prior_mean: jax.Array,
    prior_strength: float | jax.Array,
    steps: int = 100,
    learning_rate: float = 0.1,
) -> jax.Array:
    """MAP few-shot inference of user states with θ frozen, vmapped over users.

    For each user, φ̂ = argmin_φ Σ_i w_i ℓ(head(φ, f_i), y_i) − log p(φ), by Adam from the
    prior mean. The likelihood is a *sum* over support pairs, so the prior dominates at
    1–2 shots and fades as k grows. features: pytree of [U, k, ...]; labels, weights: [U, k]
    (weight 0 = padding); `prior_strength`: one value or [U], one per user. Returns [U, S].
    """
    n_users = labels.shape[0]
    S = model.user_state_dim
    if S == 0:
        return jnp.zeros((n_users, 0), jnp.float32)
    tx = optax.adam(learning_rate)
    strengths = jnp.broadcast_to(jnp.asarray(prior_strength, jnp.float32), (n_users,))

    def objective(state, feats, y, w, strength):  # state [S]; feats [k, ...]
        z = model.user_logits(state, feats)
        return preference_loss(z, y, w).sum() - model.user_state_log_prior(state, prior_mean, strength)

    def fit_one(feats, y, w, strength):
        def step(carry, _):
            state, opt_state = carry
            grads = jax.grad(objective)(state, feats, y, w, strength)
            updates, opt_state = optimizer_update(tx, grads, opt_state, state)
            return (optax.apply_updates(state, updates), opt_state), None

        (state, _), _ = jax.lax.scan(step, (prior_mean, tx.init(prior_mean)), None, length=steps)
        return state

    return jax.vmap(fit_one)(features, labels, weights, strengths)


# --- empirical-Bayes few-shot inference (docs/design/evaluation-protocol.md) ------------------------------------------


@struct.dataclass
class GaussianPrior:
    """A Gaussian over user states fitted to the seen users' learned states."""

    mean: jax.Array  # [S]
    cov: jax.Array  # [S, S], shrunk and floored so it is positive definite
    sample_eigenvalues: jax.Array  # [S] eigenvalues of the unshrunk scatter (degeneracy check)


def ledoit_wolf(deviations: jax.Array) -> jax.Array:
    """[N, S] deviations from a known mean -> [S, S] covariance shrunk towards (tr Σ̂ / S)·I.

    Ledoit & Wolf (2004): Σ = α μI + (1 − α) Σ̂ with α = min(b̄², d²) / d², where
    d² = ‖Σ̂ − μI‖²_F and b̄² = (1/N²) Σ_i ‖x_i x_iᵀ − Σ̂‖²_F: strong shrinkage when seen users
    are few relative to S, none when Σ̂ is well estimated.
    """
    n, s = deviations.shape
    sample = deviations.T @ deviations / n  # [S, S]
    mu = jnp.trace(sample) / s
    d2 = jnp.sum(jnp.square(sample - mu * jnp.eye(s)))
    # Σ_i ‖x_i x_iᵀ − Σ̂‖²_F = Σ_i ‖x_i‖⁴ − N ‖Σ̂‖²_F (as Σ_i x_i x_iᵀ = N Σ̂): no [N, S, S] array.
    b2 = jnp.sum(jnp.square(jnp.sum(jnp.square(deviations), axis=1))) - n * jnp.sum(jnp.square(sample))
    b2 = jnp.minimum(jnp.maximum(b2, 0.0) / n**2, d2)
    alpha = jnp.where(d2 > 0, b2 / jnp.maximum(d2, 1e-30), 1.0)
    return alpha * mu * jnp.eye(s) + (1.0 - alpha) * sample


def empirical_prior(model: PreferenceModel, seen_users: jax.Array, variance_floor: float = 1e-3,
                    residual_ratio: float | jax.Array = 1.0) -> GaussianPrior:
    """The prior over user states fitted to `seen_users`' learned states (empirical Bayes).

    Mean: `population_user_state(seen_users)` (so 0 shots is the population model); covariance:
    the seen states' scatter about that mean in `canonical_user_state` coordinates, Ledoit–Wolf
    shrunk, plus `variance_floor`·(mean variance) on the diagonal so that directions in which the
    seen users do not vary (PAL's softmax shift, collapsed prototypes) keep a small, finite prior.

    `residual_ratio` ρ, for a model with a `residual_block`: that block's variances times ρ (its
    covariances with the rest times √ρ: Σ ↦ DΣD, D = diag(1, √ρ), still positive definite). The
    seen states of two blocks trained jointly are shrunk by different amounts (lore's learned basis
    takes most of what seen users share in training, leaving its full-rank residual a scatter 4-10×
    smaller than `bt_residual`'s on the same users), so one multiplier of the whole prior cannot
    fit both; the evaluation fits ρ (`pluralign.evaluate.shrinkage`). Ignored without a block.
    """
    mean = model.canonical_user_state(model.population_user_state(seen_users))  # [S]
    states = model.canonical_user_state(model.user_table_state(seen_users))  # [N, S]
    deviations = states - mean[None]
    S = mean.shape[0]
    cov = ledoit_wolf(deviations)
    scale = jnp.maximum(jnp.trace(cov) / S, 1e-6)
    sample_eigenvalues = jnp.linalg.eigvalsh(deviations.T @ deviations / deviations.shape[0])
    cov = cov + variance_floor * scale * jnp.eye(S)
    block = model.residual_block()
    if block is not None:
        d = jnp.where(jnp.asarray(block), jnp.sqrt(jnp.asarray(residual_ratio, jnp.float32)), 1.0)  # [S]
        cov = cov * d[:, None] * d[None, :]
    return GaussianPrior(mean=mean, cov=cov, sample_eigenvalues=sample_eigenvalues)


def laplace_posterior(
    model: PreferenceModel,
    features: Any,
    labels: jax.Array,
    weights: jax.Array,
    prior: GaussianPrior,
    precision_scale: float | jax.Array = 1.0,
    steps: int = 100,
    learning_rate: float = 0.1,
    newton_steps: int = 3,
) -> tuple[jax.Array, jax.Array]:
    """Laplace approximation of each user's posterior over φ, vmapped over users: ([U, S], [U, S, S]).

    Prior N(m, Σ/c) (c = `precision_scale`, 1 = the fitted prior). The fit runs in whitened
    coordinates φ = m + L z (Σ = L Lᵀ), where the prior is ½c‖z‖² and Adam's step size means the
    same thing in every direction: Adam from z = 0 (the prior mean), then Newton steps that are
    kept only where they lower the objective (they make the MAP exact where the objective is
    convex, e.g. a head linear in φ). Posterior covariance: L H_z⁻¹ Lᵀ with H_z the Hessian of the
    negative log posterior at the MAP (jax.hessian; S is small). features: pytree of [U, k, ...];
    `precision_scale`: one value or [U], one per user.
    """
    n_users = labels.shape[0]
    S = prior.mean.shape[0]
    chol = jnp.linalg.cholesky(prior.cov)  # [S, S]
    tx = optax.adam(learning_rate)
    scales = jnp.broadcast_to(jnp.asarray(precision_scale, jnp.float32), (n_users,))

    def objective(z, feats, y, w, precision_scale):  # z [S]; feats [k, ...]
        phi = prior.mean + chol @ z
        logits = model.user_logits(phi, feats)
        return preference_loss(logits, y, w).sum() + 0.5 * precision_scale * jnp.sum(jnp.square(z))

    def fit_one(feats, y, w, precision_scale):
        f = lambda z: objective(z, feats, y, w, precision_scale)  # noqa: E731

        def adam_step(carry, _):
            z, opt_state = carry
            updates, opt_state = optimizer_update(tx, jax.grad(f)(z), opt_state, z)
            return (optax.apply_updates(z, updates), opt_state), None

        z0 = jnp.zeros((S,), jnp.float32)
        (z, _), _ = jax.lax.scan(adam_step, (z0, tx.init(z0)), None, length=steps)

        def newton_step(z, _):
            step = jnp.linalg.solve(jax.hessian(f)(z), jax.grad(f)(z))
            candidate = z - step
            ok = jnp.all(jnp.isfinite(candidate)) & (f(candidate) < f(z))
            return jnp.where(ok, candidate, z), None

        z, _ = jax.lax.scan(newton_step, z, None, length=newton_steps)
        hessian = jax.hessian(f)(z)  # [S, S]; ⪰ c·I wherever the likelihood is locally convex
        # A non-convex likelihood can leave negative curvature at the MAP: clip the eigenvalues at
        # the prior's own precision so the covariance never exceeds the prior's.
        evals, evecs = jnp.linalg.eigh(0.5 * (hessian + hessian.T))
        cov_z = (evecs / jnp.maximum(evals, precision_scale)[None, :]) @ evecs.T
        return prior.mean + chol @ z, chol @ cov_z @ chol.T

    return jax.vmap(fit_one)(features, labels, weights, scales)


def prior_posterior(model: PreferenceModel, seen_users: jax.Array, precision_scale: float | jax.Array,
                    n_users: int, residual_ratio: float | jax.Array = 1.0) -> tuple[jax.Array, jax.Array]:
    """`laplace_posterior` with no answers, in closed form: every user's posterior is the prior
    N(m, Σ/c), ([U, S] means, [U, S, S] covariances)."""
    prior = empirical_prior(model, seen_users, residual_ratio=residual_ratio)
    S = prior.mean.shape[0]
    scales = jnp.broadcast_to(jnp.asarray(precision_scale, jnp.float32), (n_users,))
    return jnp.broadcast_to(prior.mean, (n_users, S)), prior.cov[None] / scales[:, None, None]


def infer_user_posterior(
    model: PreferenceModel,
    features: Any,
    labels: jax.Array,
    weights: jax.Array,
    *,
    inference: str,
    seen_users: jax.Array,
    strength: float | jax.Array,
    steps: int,
    learning_rate: float,
    residual_ratio: float | jax.Array = 1.0,
) -> tuple[jax.Array, jax.Array | None]:
    """Few-shot inference of new users' states with θ frozen (docs/design/evaluation-protocol.md), the one used by the
    evaluation, the exported reward and the online user: ([U, S] states, [U, S, S] covariances or None).

    `inference="bayes"` for a model with `fits_user_state`: the empirical-Bayes prior fitted to
    `seen_users` (`empirical_prior`), its precision times `strength`, and the Laplace posterior's
    means and covariances (`laplace_posterior`). Otherwise the model's own `infer_user` (MAP under
    a prior of strength `strength` around the seen users' population state, or VPL's encoder), and
    no covariance. `strength`: one value or [U], one per user (the setting chosen for each user's
    number of answers). features: pytree of [U, k, ...]; labels, weights: [U, k].
    `residual_ratio`: the fitted variance ratio of the prior's `residual_block` (bayes only).
    """
    options = dict(steps=steps, learning_rate=learning_rate)
    if inference == "bayes" and model.fits_user_state:
        prior = empirical_prior(model, seen_users, residual_ratio=residual_ratio)
        return laplace_posterior(model, features, labels, weights, prior, precision_scale=strength, **options)
    states = model.infer_user(features, labels, weights, prior_mean=model.population_user_state(seen_users),
                              prior_strength=strength, **options)
    return states, None


def point_states(model: PreferenceModel, states: jax.Array, covs: jax.Array | None) -> jax.Array:
    """The states to report from `infer_user_posterior`'s output: Laplace means (where there are
    covariances) in `canonical_user_state` coordinates, e.g. DPA's unit direction, as a model's own
    `infer_user` already returns them."""
    return states if covs is None else model.canonical_user_state(states)


def posterior_logits(model: PreferenceModel, states: jax.Array, covs: jax.Array | None, features: Any) -> jax.Array:
    """[U, Q] logits of each user's pairs from `infer_user_posterior`'s output: posterior-predictive
    (`predictive_logits`) where there are covariances, the point state's otherwise. features: [U, Q, ...]."""
    if covs is not None:
        return jax.vmap(lambda m, c, f: predictive_logits(model, m, c, f))(states, covs, features)
    return jax.vmap(model.user_logits)(states, features)


def predictive_logits(model: PreferenceModel, mean: jax.Array, cov: jax.Array, features: Any) -> jax.Array:
    """Posterior-predictive logits of one user's pairs: σ(output) ≈ E[σ(logit)] under φ ~ N(mean, cov).

    The logit is linearised at the mean, l(φ) ≈ μ + gᵀ(φ − mean), so l ~ N(μ, v) with v = gᵀ cov g,
    and E[σ(l)] ≈ σ(μ / √(1 + πv/8)) (the probit approximation, MacKay 1992). The sign, hence the
    predicted preference, is the MAP's; the confidence shrinks where the user is uncertain.
    mean [S], cov [S, S], features [Q, ...] -> [Q].
    """
    head = lambda phi: model.user_logits(phi, features)  # noqa: E731
    mu = head(mean)  # [Q]
    grad = jax.jacfwd(head)(mean)  # [Q, S]
    variance = jnp.einsum("qs,st,qt->q", grad, cov, grad)
    return mu / jnp.sqrt(1.0 + jnp.pi * jnp.maximum(variance, 0.0) / 8.0)
