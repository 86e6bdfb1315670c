"""Online users: update a user's state as comparisons stream in, and choose the next question.

State update. An `OnlineUser` keeps the user's comparisons in a fixed-capacity padded
buffer (weight 0 on empty slots) and re-runs the reward's jitted few-shot inference on the
whole buffer after each new comparison. Because the buffer has one fixed shape, the
inference compiles once and each update costs one call (milliseconds on CPU; measured by
`scripts/bench_reward.py`), and the state after k comparisons is *exactly* the batch
inference on those k comparisons (`PersonalizedReward.infer`, same padded shape, same
program) — there is no approximate incremental filter to drift away from the protocol.

Next question. For a set of candidate pairs, the expected information gain about the user
state of asking each pair is the BALD mutual information
(`pluralign.evaluate.active.label_information_gain`) over S samples of the user's
posterior. Samples come from
  - the model's own posterior when it has one (`has_latent_posterior`): VPL's state is
    q(z | support) = N(μ, σ²), sampled in its latent space by `sample_latents(state, rng, n)` and
    scored by `latent_logits(z, features)`; otherwise
  - a Laplace approximation around the fitted state φ̂ (MAP for PAL, DPA, GPM):
        H = ∇²_φ [ Σ_i w_i ℓ(head(φ, f_i), y_i) − log p(φ) ] at φ̂,   φ_s = φ̂ + H^{-1/2} ε_s,
    restricted to the directions where H's eigenvalues exceed `min_precision`: directions the
    posterior is flat along are invariances of the model (a DPA direction's length; PAL's
    softmax shift when the prior strength is 0), moving along them changes no prediction, and
    sampling them with an "infinite" variance would only flip a direction through the origin.
    With the protocol's prior strength > 0 every other direction is proper. The user state is
    small (S ≤ ~32), so the dense S×S Hessian is cheap.
A model with no user state (BT) has nothing to learn from answers: every gain is 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pluralign.evaluate.active import label_information_gain
from pluralign.models import base
from pluralign.errors import InputError
from pluralign.export.reward import PersonalizedReward, StreamingUser, Support, text_shape


def _user_posterior_samples(reward: PersonalizedReward, params, e_x, has_prompt, e_a, e_b, label, weight, key,
                            n_samples: int, min_precision: float):
    """(state [S], samples [n, ·]) for one user's padded support [C]: latents z ~ q(z | support)
    for a model with its own posterior, else Laplace samples of the state around φ̂."""
    model = nnx.merge(reward.graphdef, params)
    feats = reward.support_features(model, e_x[None], has_prompt[None], e_a[None], e_b[None])
    strength = reward.strength_for(weight[None])  # [1]: the setting chosen for this many answers
    weight = reward.gated_support(weight[None])[0]  # no answers where the gate keeps the population
    states, covs = base.infer_user_posterior(
        model, feats, label[None], weight[None], inference=reward.inference, seen_users=reward.seen_users,
        strength=strength, steps=reward.inference_steps, learning_rate=reward.inference_learning_rate,
        residual_ratio=reward.residual_ratio,
    )
    state = states[0]
    if covs is not None:  # the evaluation's empirical-Bayes Laplace posterior
        evals, evecs = jnp.linalg.eigh(covs[0])
        scale = evecs * jnp.sqrt(jnp.maximum(evals, 0.0))[None, :]
        samples = state[None, :] + jax.random.normal(key, (n_samples, reward.state_dim)) @ scale.T
        return base.point_states(model, states, covs)[0], samples
    prior_mean = model.population_user_state(reward.seen_users)
    if model.has_latent_posterior:
        return state, model.sample_latents(state, key, n_samples)  # [n, L]
    one_feats = jax.tree.map(lambda f: f[0], feats)
    S = reward.state_dim

    def neg_log_posterior(phi):
        z = model.user_logits(phi, one_feats)
        return base.preference_loss(z, label, weight).sum() - model.user_state_log_prior(phi, prior_mean, strength[0])

    hessian = jax.hessian(neg_log_posterior)(state)
    eigenvalues, eigenvectors = jnp.linalg.eigh(0.5 * (hessian + hessian.T))
    # H^{-1/2} on the directions the posterior curves along; flat ones (eigenvalue < min_precision)
    # are the model's invariances — a DPA direction's length, which the unit normalisation
    # ignores — where a huge "variance" would only flip samples through the origin.
    inv_sqrt = jnp.where(eigenvalues > min_precision, jax.lax.rsqrt(jnp.maximum(eigenvalues, min_precision)), 0.0)
    scale = eigenvectors * inv_sqrt[None, :]
    return state, state[None, :] + jax.random.normal(key, (n_samples, S)) @ scale.T


class OnlineUser(StreamingUser):
    """One user's streaming comparisons -> current state and the most informative next question."""

    def __init__(self, reward: PersonalizedReward, *, capacity: int | None = None, n_samples: int = 64,
                 min_precision: float = 1e-3, seed: int = 0):
        self.reward = reward
        self.capacity = capacity or reward.capacity
        self.n_samples, self.min_precision = n_samples, min_precision
        self._key = jax.random.PRNGKey(seed)
        self._posterior = jax.jit(
            lambda params, *arrays, key: _user_posterior_samples(reward, params, *arrays, key, n_samples, min_precision)
        )
        self._gain = jax.jit(self._gain_impl)
        self.reset()

    def reset(self) -> None:
        D = self.reward.dim
        self.k = 0
        self._e_x = np.zeros((self.capacity, D), np.float32)
        self._has_prompt = np.zeros(self.capacity, bool)
        self._e_a = np.zeros((self.capacity, D), np.float32)
        self._e_b = np.zeros((self.capacity, D), np.float32)
        self._label = np.zeros(self.capacity, np.float32)
        self._weight = np.zeros(self.capacity, np.float32)
        self.state = self._infer()

    def _arrays(self):
        return self._e_x, self._has_prompt, self._e_a, self._e_b, self._label, self._weight

    def _infer(self) -> jax.Array:
        return self.reward.infer_padded(self.reward.params, *(jnp.asarray(x)[None] for x in self._arrays()))[0]

    def add(self, e_a, e_b, label: float = 1.0, e_x=None, weight: float = 1.0) -> jax.Array:
        """Records one comparison (a ≻ b with probability `label`) and returns the updated state [S].
        `e_a`, `e_b` (and the optional prompt `e_x`) are [D] embeddings or texts, embedded with the
        run's encoder; all are checked as a `Support`'s are (`PersonalizedReward.support_arrays`)."""
        if self.k == self.capacity:
            raise InputError(f"OnlineUser.add: the buffer is full ({self.capacity} comparisons); "
                             "create the OnlineUser with a larger capacity")
        one = Support(e_a=e_a, e_b=e_b, label=label, e_x=e_x, weight=weight)
        e_x_row, has_prompt, e_a_row, e_b_row, label_row, weight_row = self.reward.support_arrays(one, where="")
        if len(e_a_row) != 1:
            raise InputError(f"e_a: {len(e_a_row)} rows; OnlineUser.add takes one comparison (a [D] embedding or one text)")
        i = self.k
        self._e_x[i], self._has_prompt[i] = e_x_row[0], has_prompt[0]
        self._e_a[i], self._e_b[i] = e_a_row[0], e_b_row[0]
        self._label[i], self._weight[i] = label_row[0], weight_row[0]
        self.k += 1
        self.state = self._infer()
        return self.state

    @property
    def support(self) -> Support:
        """The comparisons so far, as a `Support` (None prompts are zero rows with has_prompt False)."""
        k = self.k
        return Support(e_a=self._e_a[:k], e_b=self._e_b[:k], label=self._label[:k], weight=self._weight[:k],
                       e_x=self._e_x[:k] if self._has_prompt[:k].all() and k else None)

    def posterior_samples(self) -> tuple[jax.Array, jax.Array]:
        """(state [S], samples [n_samples, S]) of the user's current posterior."""
        self._key, key = jax.random.split(self._key)
        return self._posterior(self.reward.params, *(jnp.asarray(x) for x in self._arrays()), key=key)

    def _gain_impl(self, params, samples, e_x, has_prompt, e_a, e_b):
        model = nnx.merge(self.reward.graphdef, params)
        feats = model.pair_features(base.PairEmbeddings(e_x=e_x, has_prompt=has_prompt, e_a=e_a, e_b=e_b))  # [P, ...]
        P = e_a.shape[0]
        # Samples are latents z (VPL's posterior) or user states, which `latent_logits` scores by default.
        logits = jax.vmap(lambda s: model.latent_logits(jnp.broadcast_to(s, (P, s.shape[0])), feats))(samples)  # [n, P]
        return label_information_gain(logits)

    def information_gain(self, e_a, e_b, e_x=None) -> jax.Array:
        """[P] expected information gain (nats) about this user's state of asking each candidate pair
        (e_a, e_b: [P, D] embeddings or P texts; e_x: none, one or P prompts)."""
        prompt = e_x if e_x is not None and text_shape(e_x) is not None else None
        e_a = jnp.asarray(self.reward.embeddings(e_a, "e_a", (2,), prompt=prompt))
        e_b = jnp.asarray(self.reward.embeddings(e_b, "e_b", (2,), prompt=prompt))
        P = e_a.shape[0]
        if e_b.shape[0] != P:
            raise InputError(f"e_b: {e_b.shape[0]} candidate pairs but e_a has {P}")
        if self.reward.state_dim == 0:
            return jnp.zeros((P,), jnp.float32)
        if e_x is None:
            e_x, has_prompt = jnp.zeros_like(e_a), jnp.zeros((P,), bool)
        else:
            e_x = jnp.asarray(self.reward.embeddings(e_x, "e_x", is_prompt=True))
            if e_x.ndim == 2 and e_x.shape[0] != P:
                raise InputError(f"e_x: {e_x.shape[0]} prompts for {P} candidate pairs")
            e_x, has_prompt = jnp.broadcast_to(e_x, e_a.shape), jnp.ones((P,), bool)
        _, samples = self.posterior_samples()
        return self._gain(self.reward.params, samples, e_x, has_prompt, e_a, e_b)

    def next_question(self, e_a, e_b, e_x=None) -> tuple[int, np.ndarray]:
        """(index of the candidate pair to ask next, gains [P])."""
        gains = np.asarray(self.information_gain(e_a, e_b, e_x))
        return int(np.argmax(gains)), gains
