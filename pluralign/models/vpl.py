"""VPL: variational preference learning with a per-user latent (docs/design/equations.md).

Follows "Personalizing Reinforcement Learning from Human Feedback with Variational
Preference Learning" (Poddar et al., NeurIPS 2024; WEIRDLabUW/vpl_llm,
`hidden_context/vae_utils.py`), on frozen embeddings. A user is described by a context
set C = {(x_j, a_j, b_j, y_j)} of their comparisons:

    pair encoder      h_j = MLP_enc([ẽ_x; e_chosen; e_rejected])                  [C, H]
    self-attention    h'_j = Σ_i softmax_i(q_j·k_i / √H) v_i   (masked keys)        [C, H]
    mean-pool         h̄ = Σ_j m_j h'_j / Σ_j m_j                                  [H]
    posterior         μ = clip(W_μ h̄),  log σ² = clip(W_σ h̄),  q(z|C) = N(μ, σ²)   [L]
    decoder           D(x, y, z) = MLP_dec([ẽ_x; e_y; n(z)])
    reward (anchor)   r(x, y, z) = r_θ(x, y) + g(x, y, z),   g(x, y, z) = D(x, y, z) − D(x, y, 0)
    reward (paper)    r(x, y, z) = D(x, y, z)                                    (`anchor=False`)
    P(a ≻ b | z)      = σ(r(x, a, z) − r(x, b, z))
    loss              −log σ(Δr) + β(step)·KL(q(z|C) ‖ N(0, I)),   z = μ + σ·ε

ẽ_x is the prompt embedding, or the learned null prompt where there is none, so the
decoder is prompt-aware. r_θ = MLP([ẽ_x; e_y]) is BT's reward, computed by a `BT` module
(its own null prompt and MLP, BT's code), trained jointly by the same loss on every comparison.

Population anchor (docs/design/equations.md, docs/design/evaluation-protocol.md; the default): g(x, y, 0) = 0, so at z = 0 — the prior
mean, the state of a user with no answers (an empty context gives exactly μ = 0) — the
reward IS r_θ, the population BT model, and a user's latent moves them away from it only as
far as their context does (LoRe's residual, `lore.py`, with an amortised posterior). The
personal part keeps the paper's decoder, nonlinear in z (the linear alternative g = zᵀB(x, y)
would be lore's head); subtracting D(x, y, 0) only removes its z-independent part, which
r_θ carries. g is set to 0 where n(z) = 0 exactly, so z = 0 is BT bit for bit and not up
to rounding (D(z) and D(0) may be compiled with different shapes). `anchor=False` is the
paper's decoder, unchanged (same parameters, same numbers).
Training needs nothing new for the anchor: r_θ gets the gradient of every comparison through
the same loss, and the KL to N(0, I) already makes z = 0 the centre of the users. It does not
make r_θ the best *population* guess (the decomposition r_θ + g is only pinned by where the
posteriors sit); `population_weight` > 0 adds BT's own loss of r_θ alone on each batch, which
picks, among the equivalent decompositions, the one where r_θ is a BT fit.

Decisions (deviations from the reference code, on purpose):
- Soft labels: a context pair is encoded in both orders and the two are weighted by
  the label, h = y·enc(a, b) + (1 − y)·enc(b, a); a hard label is the reference's
  "chosen first" orientation, a 0.5 label is symmetric.
- z normalisation n(z): ONE function used in training, seen-user scoring, few-shot and
  active elicitation. Default `normalize_z=False`: n is the identity (the KL term keeps
  z on the prior's scale). `normalize_z=True` projects onto the sphere of radius √L,
  as the reference does, but everywhere (the reference normalises only its training
  samples, so its evaluation decodes a differently scaled z).
- The reference scales ε by 1e-3 and clamps μ and log σ² to [−1, 1]; here ε is a
  standard normal sample (the true reparameterisation) and the clamps are options.
- An empty context (a user with one training comparison; 0 shots) gives the prior
  N(0, I) itself rather than the heads' bias.
- User state (S = 2L): [μ; log σ²] packed; scoring uses the posterior mean n(μ).
  Seen users are scored with the posterior from their first `c_max` training
  comparisons (in a fixed random order, `base.user_context`): the model's `training_context`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from pluralign.models.base import (
    MLP,
    Dims,
    NullPrompt,
    PairEmbeddings,
    PreferenceModel,
    Tables,
    TrainStep,
    UserContext,
    gather,
    user_context,
    weighted_metrics,
)
from pluralign.models.bt import BT, BTConfig, PopulationStage
from pluralign.numerics import binary_entropy


@dataclasses.dataclass
class VPLConfig:
    name: str = "vpl"
    latent_dim: int = 8  # L
    pair_dim: int = 32  # H, the pair encoding and attention width
    encoder_hidden: list[int] = dataclasses.field(default_factory=lambda: [64])
    decoder_hidden: list[int] = dataclasses.field(default_factory=lambda: [64])
    attention: bool = True  # False: mean-pool the pair encodings directly
    beta: float = 0.01  # final KL weight
    beta_schedule: str = "linear"  # constant | linear | cyclical warm-up of β
    beta_warmup_steps: int = 500  # linear: steps from 0 to β; cyclical: length of one cycle
    c_min: int = 1  # training context size is uniform in [c_min, c_max] (capped by the user's data)
    c_max: int = 16
    context_pool: int = 64  # contexts are drawn from a random window of this many of the user's other pairs
    mu_clamp: float = 5.0
    logvar_min: float = -6.0
    logvar_max: float = 2.0
    normalize_z: bool = False  # n(z): identity, or z/‖z‖·√L (used in training AND evaluation)
    anchor: bool = True  # r = r_θ + D(z) − D(0), z = 0 is BT; False: r = D(z), the paper's decoder
    population_hidden: list[int] = dataclasses.field(default_factory=lambda: [64])  # r_θ's hidden layers (BT's `hidden`)
    population_weight: float = 0.0  # anchored: + this × BT's loss of r_θ alone on the same comparisons
    population_stage: bool = True  # anchored: train r_θ first as BT (own early stopping), then freeze it (models.bt.PopulationStage)

    def __post_init__(self):
        if self.beta_schedule not in ("constant", "linear", "cyclical"):
            raise ValueError(f"model.beta_schedule must be constant, linear or cyclical, got {self.beta_schedule!r}")
        if not 0 <= self.c_min <= self.c_max or self.c_max < 1:
            raise ValueError(f"model.c_min/c_max must satisfy 0 <= c_min <= c_max, c_max >= 1; got {self.c_min}, {self.c_max}")
        if self.latent_dim < 1 or self.pair_dim < 1 or self.context_pool < 1:
            raise ValueError("model.latent_dim, model.pair_dim and model.context_pool must be >= 1")
        if self.logvar_min > self.logvar_max or self.beta < 0:
            raise ValueError("model.logvar_min must be <= model.logvar_max and model.beta >= 0")
        if self.population_weight < 0 or (self.population_weight > 0 and not self.anchor):
            raise ValueError("model.population_weight must be >= 0, and 0 without model.anchor (there is no r_θ)")


@dataclasses.dataclass(frozen=True)
class VPLSettings:
    """The options the forward pass reads, hashable (VPLConfig holds lists), so the model's
    graphdef can be a static jit argument."""

    latent_dim: int
    attention: bool
    beta: float
    beta_schedule: str
    beta_warmup_steps: int
    c_min: int
    c_max: int
    context_pool: int
    mu_clamp: float
    logvar_min: float
    logvar_max: float
    normalize_z: bool
    anchor: bool
    population_weight: float

    @classmethod
    def of(cls, config: VPLConfig) -> VPLSettings:
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


def kl_to_standard_normal(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²), over the last axis."""
    return 0.5 * jnp.sum(jnp.square(mu) + jnp.exp(logvar) - 1.0 - logvar, axis=-1)


def beta_at(config: VPLConfig | VPLSettings, step) -> jax.Array:
    """β of the KL term at a training step (None = after training: the final β)."""
    if step is None or config.beta_schedule == "constant":
        return jnp.float32(config.beta)
    t = jnp.asarray(step, jnp.float32) / max(config.beta_warmup_steps, 1)
    if config.beta_schedule == "cyclical":  # ramp up over the first half of each cycle, hold over the second
        t = 2.0 * (t - jnp.floor(t))
    return config.beta * jnp.clip(t, 0.0, 1.0)


def rescaled_prior(mu: jax.Array, logvar: jax.Array, strength) -> tuple[jax.Array, jax.Array]:
    """The encoder's q(z | C) = N(μ, σ²) under the prior N(0, I/c) instead of N(0, I), c = `strength`
    (a scalar or [...], broadcast against [..., L]): how far a new user's answers move z, decided
    like every other model's prior scale (`pluralign.evaluate.shrinkage`).

    q is read per dimension as the prior N(0, 1) times a Gaussian likelihood of precision
    1/σ² − 1 (the encoder is trained against exactly that prior: the KL term). Under N(0, 1/c) the
    posterior precision is 1/σ² − 1 + c and the mean (μ/σ²) / (1/σ² − 1 + c): c = 1 returns q
    itself, c → ∞ the population z = 0 (BT for the anchored VPL), c < 1 trusts the answers more.
    Where that precision would fall below c/σ² (c < 1 and σ² near 1 or above: a dimension the
    answers barely inform), it is c/σ²: μ scaled by 1/c, still finite."""
    precision = jnp.exp(-logvar)
    strength = jnp.asarray(strength, precision.dtype)
    strength = strength.reshape(strength.shape + (1,) * (precision.ndim - strength.ndim))
    new = jnp.maximum(precision + strength - 1.0, jnp.minimum(strength, 1.0) * precision)
    return mu * precision / new, -jnp.log(new)


class VPL(PreferenceModel):
    logit_is_reward_difference = True
    uses_prior_strength = True  # the encoder's posterior under a prior of precision c (`rescaled_prior`)
    has_latent_posterior = True  # the state [μ; log σ²] is q(z | C)
    amortized_inference = True  # q(z | C) is an encoder trained on the seen users' training pairs

    @property
    def fits_user_state(self) -> bool:
        return False  # amortised: the encoder is the posterior, nothing is fitted by optimisation

    @classmethod
    def population_stage(cls, config: VPLConfig) -> PopulationStage | None:
        if config.anchor and config.population_stage:
            return PopulationStage(BTConfig(hidden=list(config.population_hidden)), path=("population",))
        return None

    @classmethod
    def state_dim(cls, config: VPLConfig, dims: Dims) -> int:
        return 2 * config.latent_dim  # [μ; log σ²]

    def __init__(self, config: VPLConfig, dims: Dims, *, rngs: nnx.Rngs):
        self.settings = VPLSettings.of(config)
        L, H = config.latent_dim, config.pair_dim
        self.user_state_dim = self.state_dim(config, dims)
        self.null_prompt = NullPrompt(dims.dim, rngs=rngs)
        self.pair_encoder = MLP(3 * dims.dim, tuple(config.encoder_hidden), H, rngs=rngs)
        self.query = nnx.Linear(H, H, rngs=rngs)
        self.key = nnx.Linear(H, H, rngs=rngs)
        self.value = nnx.Linear(H, H, rngs=rngs)
        self.mu_head = nnx.Linear(H, L, rngs=rngs)
        self.logvar_head = nnx.Linear(H, L, rngs=rngs)
        self.decoder = MLP(2 * dims.dim + L, tuple(config.decoder_hidden), 1, rngs=rngs)
        if config.anchor:  # built last, so the modules above draw the same initial values in both modes
            self.population = BT(BTConfig(hidden=list(config.population_hidden)), dims, rngs=rngs)  # r_θ

    # --- user-independent features: first-layer pre-activations, split by input block
    def pair_features(self, pair: PairEmbeddings) -> dict:
        """Encoder inputs in both orders and decoder inputs of a and b, before z: [B, ·] each;
        anchored, also "population": r_θ(x, a) − r_θ(x, b) [B], BT's own pair features."""
        D = pair.e_a.shape[-1]
        e_x = self.null_prompt(pair.e_x, pair.has_prompt)  # [B, D]
        enc = self.pair_encoder.layers[0]
        ek = enc.kernel[...]  # [3D, H_enc]
        enc_x = e_x @ ek[:D] + enc.bias[...][None]
        dec = self.decoder.layers[0]
        dk = dec.kernel[...]  # [2D + L, H_dec]
        dec_x = e_x @ dk[:D] + dec.bias[...][None]
        features = {
            "enc_ab": enc_x + pair.e_a @ ek[D : 2 * D] + pair.e_b @ ek[2 * D :],
            "enc_ba": enc_x + pair.e_b @ ek[D : 2 * D] + pair.e_a @ ek[2 * D :],
            "dec_a": dec_x + pair.e_a @ dk[D : 2 * D],
            "dec_b": dec_x + pair.e_b @ dk[D : 2 * D],
        }
        if self.settings.anchor:
            features["population"] = self.population.pair_features(pair)  # [B]
        return features

    # --- encoder: context set -> q(z | C)
    def posterior(self, features: dict, labels: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Context features [..., C, ·], labels and weights [..., C] (0 = not in the context)
        -> (μ, log σ²) [..., L]; an empty context gives the prior (0, 0)."""
        enc = self.pair_encoder.after_first_layer
        y = labels[..., None]
        h = y * enc(features["enc_ab"]) + (1.0 - y) * enc(features["enc_ba"])  # [..., C, H]
        in_context = weights > 0  # [..., C]
        if self.settings.attention:
            q, k, v = self.query(h), self.key(h), self.value(h)
            scores = jnp.einsum("...ih,...jh->...ij", q, k) / math.sqrt(h.shape[-1])  # [..., C, C]
            scores = jnp.where(in_context[..., None, :], scores, -1e30)
            h = jnp.einsum("...ij,...jh->...ih", jax.nn.softmax(scores, axis=-1), v)  # [..., C, H]
        w = jnp.where(in_context, weights, 0.0)  # [..., C]
        total = w.sum(axis=-1)
        pooled = jnp.einsum("...c,...ch->...h", w, h) / jnp.maximum(total, 1e-9)[..., None]  # [..., H]
        cfg = self.settings
        mu = jnp.clip(self.mu_head(pooled), -cfg.mu_clamp, cfg.mu_clamp)
        logvar = jnp.clip(self.logvar_head(pooled), cfg.logvar_min, cfg.logvar_max)
        empty = (total <= 0)[..., None]
        return jnp.where(empty, 0.0, mu), jnp.where(empty, 0.0, logvar)

    def normalize(self, z: jax.Array) -> jax.Array:
        """n(z), the same in training and evaluation (see the module docstring)."""
        if not self.settings.normalize_z:
            return z
        return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-6) * math.sqrt(z.shape[-1])

    # --- decoder
    def _decode(self, z: jax.Array, dec_pre: jax.Array) -> jax.Array:
        """z [..., L], first-layer pre-activation without z [..., H_dec] -> reward [...]."""
        kernel = self.decoder.layers[0].kernel[...]  # [2D + L, H_dec]
        z_part = self.normalize(z) @ kernel[kernel.shape[0] - z.shape[-1] :]  # [..., H_dec]
        # Leading sample axes of z (e.g. [S, B, L] against [B, H]) broadcast explicitly.
        dec_pre = dec_pre.reshape((1,) * (z_part.ndim - dec_pre.ndim) + dec_pre.shape)
        z_part = z_part.reshape((1,) * (dec_pre.ndim - z_part.ndim) + z_part.shape)
        return self.decoder.after_first_layer(dec_pre + z_part)[..., 0]

    def _personal(self, z: jax.Array, dec_pre: jax.Array) -> jax.Array:
        """g = D(z) − D(0) [...], as `_decode`; exactly 0 where n(z) = 0 (see the module docstring)."""
        moved = self._decode(z, dec_pre)
        at_zero = self.decoder.after_first_layer(dec_pre)[..., 0]
        at_zero = at_zero.reshape((1,) * (moved.ndim - at_zero.ndim) + at_zero.shape)
        nonzero = jnp.any(self.normalize(z) != 0, axis=-1)
        nonzero = nonzero.reshape((1,) * (moved.ndim - nonzero.ndim) + nonzero.shape)
        return jnp.where(nonzero, moved - at_zero, 0.0)

    def _latent_reward(self, z: jax.Array, dec_pre: jax.Array, population: jax.Array | None) -> jax.Array:
        """r(x, y, z) [...]: r_θ (`population`, the shape of the result; None when not anchored) + g,
        or the paper's D(z)."""
        if not self.settings.anchor:
            return self._decode(z, dec_pre)
        return population + self._personal(z, dec_pre)

    def latent_logits(self, z: jax.Array, features: dict) -> jax.Array:
        """Logits of P(a ≻ b | z) for latents z [..., L] broadcast against features [..., ·]."""
        if not self.settings.anchor:
            return self._decode(z, features["dec_a"]) - self._decode(z, features["dec_b"])
        personal = self._personal(z, features["dec_a"]) - self._personal(z, features["dec_b"])  # [..., B]
        shared = features["population"]  # [B] r_θ(a) − r_θ(b)
        return shared.reshape((1,) * (personal.ndim - shared.ndim) + shared.shape) + personal

    def pair_logits(self, user_state, features):
        return self.latent_logits(user_state[..., : self.settings.latent_dim], features)  # posterior mean

    def split_state(self, user_state: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[..., 2L] -> (μ, log σ²) [..., L] each."""
        return user_state[..., : self.settings.latent_dim], user_state[..., self.settings.latent_dim :]

    # --- users
    def infer_user(self, support_features, labels, weights, *, prior_mean=None, prior_strength=1.0, **options):
        """Amortised few-shot inference: the support pairs are the context (no gradient steps).
        [U, k, ·] -> [U, 2L] = [μ; log σ²], the encoder's posterior under the prior N(0, I/c),
        c = `prior_strength` (`rescaled_prior`; 1: as trained). The other MAP options do not apply."""
        del prior_mean, options
        return jnp.concatenate(rescaled_prior(*self.posterior(support_features, labels, weights), prior_strength), axis=-1)

    def population_user_state(self, users=None):
        return jnp.zeros((self.user_state_dim,), jnp.float32)  # the prior N(0, I): μ = 0, log σ² = 0

    def user_table_state(self, users):
        # Without the training comparisons VPL knows nothing of a user: the prior. Scoring
        # goes through `seen_states`, which encodes the user's training comparisons.
        return jnp.zeros((users.shape[0], self.user_state_dim), jnp.float32)

    @classmethod
    def training_context(cls, train, n_users, *, seed):
        """Each user's training comparisons, in a fixed random order drawn with `seed`."""
        return user_context(train, n_users, seed=seed)

    def seen_states(self, tables: Tables, users: jax.Array, context: UserContext | None = None) -> jax.Array:
        """Posterior of each seen user from their first c_max training comparisons (`context`,
        the `training_context`; without it, the prior): [B, 2L]."""
        ctx = context
        if ctx is None:
            return self.user_table_state(users)
        c = self.settings.c_max
        start, count = ctx.offsets[users], ctx.offsets[users + 1] - ctx.offsets[users]  # [B]
        slot = jnp.arange(c)[None, :]  # [1, c]
        rows = jnp.minimum(start[:, None] + slot, ctx.pairs.label.shape[0] - 1)  # [B, c]
        mask = slot < count[:, None]
        return self._context_state(tables, ctx, rows, mask)

    def _context_state(self, tables: Tables, ctx: UserContext, rows: jax.Array, mask: jax.Array) -> jax.Array:
        """Rows [B, c] of ctx.pairs (mask [B, c]) -> posterior [B, 2L]."""
        context = jax.tree.map(lambda col: col[rows.reshape(-1)], ctx.pairs)
        feats = jax.tree.map(lambda f: f.reshape(*rows.shape, *f.shape[1:]), self.pair_features(gather(tables, context)))
        weights = jnp.where(mask, context.weight.reshape(rows.shape), 0.0)
        return jnp.concatenate(self.posterior(feats, context.label.reshape(rows.shape), weights), axis=-1)

    # --- training
    def sample_context(self, ctx: UserContext, batch, rows: jax.Array | None, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """For each query, rows [B, c_max] of ctx.pairs and a mask [B, c_max]: a random number in
        [c_min, c_max] of the same user's OTHER training comparisons, without replacement (from a
        random window of `context_pool` of them), never the query itself (`rows`: the queries'
        training rows; None = not training comparisons, any of the user's may be context)."""
        cfg = self.settings
        size_key, start_key, pick_key = jax.random.split(rng, 3)
        B = batch.label.shape[0]
        start, count = ctx.offsets[batch.user], ctx.offsets[batch.user + 1] - ctx.offsets[batch.user]  # [B]
        if rows is None:
            own, n_other = jnp.full((B,), -1, jnp.int32), count
        else:
            own, n_other = ctx.position[rows] - start, count - 1
        size = jnp.minimum(jax.random.randint(size_key, (B,), cfg.c_min, cfg.c_max + 1), n_other)  # [B]
        W = cfg.context_pool
        offset = jax.random.randint(start_key, (B,), 0, jnp.iinfo(jnp.int32).max) % jnp.maximum(n_other, 1)
        window = jnp.arange(W)[None, :]  # [1, W]
        candidate = (offset[:, None] + window) % jnp.maximum(n_other, 1)[:, None]  # [B, W] index among the others
        scores = jnp.where(window < n_other[:, None], jax.random.uniform(pick_key, (B, W)), -1.0)
        _, picked = jax.lax.top_k(scores, min(cfg.c_max, W))  # [B, c]
        other = jnp.take_along_axis(candidate, picked, axis=1)
        within = other + ((own[:, None] >= 0) & (other >= own[:, None])).astype(other.dtype)  # skip the query's own slot
        mask = jnp.arange(picked.shape[1])[None, :] < size[:, None]
        rows = jnp.clip(start[:, None] + within, 0, ctx.pairs.label.shape[0] - 1)
        return rows, mask

    def loss(self, tables: Tables, batch, rng):
        raise ValueError("VPL's objective draws each comparison's context set from its user's other training "
                         "comparisons: call training_loss with a TrainStep carrying VPL.training_context")

    def training_loss(self, tables: Tables, batch, step: TrainStep):
        """−log σ(Δr) + β(step)·KL, z sampled from the posterior of a context set drawn from the
        query's user's other training comparisons (`step.context`, `step.rows`)."""
        if step.context is None:
            raise ValueError("VPL trains on per-user context sets: pass TrainStep.context = VPL.training_context(...)")
        context_key, z_key = jax.random.split(step.rng)
        rows, mask = self.sample_context(step.context, batch, step.rows, context_key)
        mu, logvar = self.split_state(self._context_state(tables, step.context, rows, mask))  # [B, L] each
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(z_key, mu.shape)  # reparameterised
        features = self.pair_features(gather(tables, batch))
        logits = self.latent_logits(z, features)  # [B]
        metrics = weighted_metrics(logits, batch.label, batch.weight)
        kl = (kl_to_standard_normal(mu, logvar) * batch.weight).sum() / jnp.maximum(batch.weight.sum(), 1e-9)
        objective = metrics["loss"] + beta_at(self.settings, step.step) * kl
        out = {"loss": metrics["loss"], "kl": kl, "accuracy": metrics["accuracy"]}
        if self.settings.population_weight > 0:  # r_θ alone fitted as BT is fitted: z = 0 the best population guess
            out["population_loss"] = weighted_metrics(features["population"], batch.label, batch.weight)["loss"]
            objective = objective + self.settings.population_weight * out["population_loss"]
        return objective, out

    # --- rewards and uncertainty
    def reward(self, user_state, e_x, has_prompt, e_y, reference_y: jax.Array | None = None):
        """[B] reward r(x, y, n(μ_u)) (anchored: r_θ + g); with `reference_y` [R, D] the *scaled* reward instead:
        the expected win probability of y against the reference responses under the
        user's latent, mean_j σ(r(x, y, z) − r(x, y_j, z)) ∈ (0, 1), comparable across users."""
        D = e_y.shape[-1]
        dk = self.decoder.layers[0].kernel[...]
        dec_x = self.null_prompt(e_x, has_prompt) @ dk[:D] + self.decoder.layers[0].bias[...][None]  # [B, H]
        mu = user_state[..., : self.settings.latent_dim]
        anchored = self.settings.anchor
        shared_y = self.population.reward(user_state, e_x, has_prompt, e_y) if anchored else None  # [B] r_θ
        r_y = self._latent_reward(mu, dec_x + e_y @ dk[D : 2 * D], shared_y)  # [B]
        if reference_y is None:
            return r_y
        ref_pre = dec_x[:, None, :] + (reference_y @ dk[D : 2 * D])[None]  # [B, R, H]
        e_ref = jnp.broadcast_to(reference_y[None], (e_y.shape[0], *reference_y.shape))  # [B, R, D]
        shared_ref = self.population.rewards(user_state, e_x, has_prompt, e_ref) if anchored else None  # [B, R]
        r_ref = self._latent_reward(mu[:, None, :], ref_pre, shared_ref)  # [B, R]
        return jnp.mean(jax.nn.sigmoid(r_y[:, None] - r_ref), axis=-1)

    def rewards(self, user_state, e_x, has_prompt, e_y):
        """[B, 2L], [B, D], [B], [B, N, D] -> [B, N] r(x, y, n(μ_u)), the prompt and latent parts of
        the decoder's first layer once per row."""
        D = e_y.shape[-1]
        dk = self.decoder.layers[0].kernel[...]
        dec_x = self.null_prompt(e_x, has_prompt) @ dk[:D] + self.decoder.layers[0].bias[...][None]  # [B, H]
        mu = user_state[..., : self.settings.latent_dim]
        shared = self.population.rewards(user_state, e_x, has_prompt, e_y) if self.settings.anchor else None  # [B, N] r_θ
        return self._latent_reward(mu[:, None, :], dec_x[:, None, :] + e_y @ dk[D : 2 * D], shared)  # [B, N]

    def describe_user_states(self, states):
        mean, log_variance = self.split_state(states)
        return {
            "posterior_mean": (mean, "μ_u ∈ R^L: mean of q(z | C_u), VPL's posterior over user u's latent given their "
                                     "training comparisons; responses are scored with n(μ_u) (anchored: the "
                                     "population BT reward plus the decoder's change from z = 0, so μ_u = 0 is "
                                     "the population)."),
            "posterior_variance": (jnp.exp(log_variance), "σ²_u ∈ R^L: variance of q(z | C_u) per latent dimension "
                                                           "(small = the context pins the user down)."),
        }

    def posterior_variance(self, user_state: jax.Array) -> jax.Array:
        """σ² [..., L] of q(z | C)."""
        return jnp.exp(self.split_state(user_state)[1])

    def sample_latents(self, user_state: jax.Array, rng: jax.Array, n_samples: int) -> jax.Array:
        """[..., 2L] -> [n_samples, ..., L] draws z ~ q(z | C)."""
        mu, logvar = self.split_state(user_state)
        return mu[None] + jnp.exp(0.5 * logvar)[None] * jax.random.normal(rng, (n_samples, *mu.shape))

    def predictive_entropy(self, user_state, features, rng: jax.Array, n_samples: int = 64) -> jax.Array:
        """H( E_{z~q}[P(a ≻ b | z)] ) [B] in nats, by sampling z: high where the model is
        unsure of this user's answer, either from label noise or from not knowing z."""
        z = self.sample_latents(user_state, rng, n_samples)  # [S, B, L]
        p = jax.nn.sigmoid(self.latent_logits(z, features))  # [S, B]
        return binary_entropy(p.mean(axis=0))
