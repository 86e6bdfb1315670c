"""A trained model as a personalized reward function, for reranking and policy training.

    reward = pluralign.load(run_dir).reward()
    r = reward(prompt, responses, user)        # [N] (or [B, N] for a batch of prompts)

`user` is one of
  - a known (seen) user's id — as in the dataset's `user_ids`, or its row number;
  - `Support(e_a, e_b, label, e_x)`: comparisons of a *new* user, whose state is inferred
    on the fly with θ frozen by exactly the evaluation protocol's inference (`eval.inference`:
    the empirical-Bayes posterior mean under the prior fitted to the run's seen users, or
    `model.infer_user`'s MAP around their population state; with the prior setting the run
    chose on unseen-val users for that many answers, in the run's primary split mode or the
    `reward(split_mode=...)` given; `pluralign.evaluate.fewshot`);
  - `UserState(vector)`: an explicit user state φ of size `user_state_dim` — for DPA a
    direction v_u over the attributes (arithmetic control), for PAL mixture logits, ...

Every computation is one jitted function over padded, fixed shapes (support buffers of
`capacity` pairs), so repeated calls with the same shapes never recompile.
`preference_matrix` gives P(y_i ≻ y_j | x, u) for all pairs of candidates through the
model's own pair logits — for GPM that is the (possibly intransitive) general preference,
which no scalar reward expresses. `best_of_n` reranks; `policy_reward_fn` is the hook for
a policy-training loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pluralign.models import base, ranking

# The policy-loop hook's signature: (prompt embeddings [B, D] or None, response embeddings
# [B, D]) -> rewards [B]. Pure and traceable: it can be called inside a jitted policy step.
RewardFn = Callable[[jax.Array | None, jax.Array], jax.Array]


@dataclasses.dataclass
class Support:
    """k comparisons of one user: a preferred over b with probability `label`."""

    e_a: Any  # [k, D]
    e_b: Any  # [k, D]
    label: Any = None  # [k] P(a ≻ b); None = a was chosen (1.0)
    e_x: Any = None  # [k, D] or [D] prompt embeddings; None = no prompt
    weight: Any = None  # [k]; None = 1

    def __len__(self) -> int:
        return int(np.shape(self.e_a)[0])


@dataclasses.dataclass
class UserState:
    """An explicit user state φ [S] (DPA: a direction over the attributes)."""

    vector: Any


class StreamingUser:
    """A user whose state is kept up to date elsewhere as their comparisons arrive
    (`pluralign.export.OnlineUser`); a `PersonalizedReward` scores them with their current `state`."""

    state: jax.Array  # [S]


def _pad_rows(x: np.ndarray, capacity: int) -> np.ndarray:
    out = np.zeros((capacity, *x.shape[1:]), x.dtype)
    out[: len(x)] = x
    return out


class PersonalizedReward:
    """Jit-compiled, batched rewards of a loaded model (`pluralign.load(path).reward()`)."""

    def __init__(self, trained, *, capacity: int = 64, encoder: Any = None, split_mode: str | None = None):
        self.trained = trained
        self.graphdef, self.params = trained.graphdef, trained.params
        self.model = trained.model
        self.dim = int(trained.record["dims"]["dim"])
        self.state_dim = int(self.model.user_state_dim)
        self.capacity = int(capacity)  # support pairs per inference call (padded); more -> larger buffers
        fewshot = trained.record["fewshot"]
        # {k: setting} chosen on unseen-val users at each k in `split_mode` (random: support and
        # query share items; item_disjoint: new items), and the mode's setting over all k where its
        # val users reached no k; older artifacts have one setting.
        by_mode = fewshot.get("prior_strength_by_k") or {}
        if split_mode is not None and split_mode not in by_mode:
            raise ValueError(f"{trained.name}: no few-shot prior chosen in split mode {split_mode!r}; "
                             f"the run measured {sorted(by_mode) or 'no per-k choice'}")
        self.split_mode = split_mode or fewshot.get("mode") or next(iter(by_mode), None)
        self.prior_strength = float((fewshot.get("prior_strength_by_mode") or {}).get(self.split_mode, fewshot["prior_strength"]))
        self.prior_strength_by_k = {int(k): float(v) for k, v in by_mode.get(self.split_mode, {}).items()}
        gates = fewshot.get("personalize_by_k")  # None: an older artifact, which always personalizes
        self.personalize_by_k = None if gates is None else {int(k): bool(v) for k, v in gates.get(self.split_mode, {}).items()}
        self.inference = fewshot.get("inference", "map")
        self.inference_steps = int(fewshot["steps"])
        self.inference_learning_rate = float(fewshot["learning_rate"])
        self.seen_users = jnp.asarray(trained.seen_users)
        self._encoder = encoder
        # [U, C] padded support arrays -> [U, S] states (one compiled program per shape; OnlineUser's too).
        self.infer_padded = jax.jit(self._infer_impl)
        self._rewards = jax.jit(self._rewards_impl)
        self._matrix = jax.jit(self._matrix_impl)
        self.has_scalar_reward = self.model.has_scalar_reward
        self._seen_states_host = np.asarray(trained.seen_states)  # [n_users, S]; a lookup costs no dispatch

    # ------------------------------------------------------------------ jitted kernels
    def support_features(self, model, e_x, has_prompt, e_a, e_b):
        """Pair features of [U, C] pairs, computed as one flat [U·C] batch (as the eval protocol)."""
        shape = has_prompt.shape
        flat = base.PairEmbeddings(
            e_x=e_x.reshape(-1, self.dim), has_prompt=has_prompt.reshape(-1),
            e_a=e_a.reshape(-1, self.dim), e_b=e_b.reshape(-1, self.dim),
        )
        feats = model.pair_features(flat)
        return jax.tree.map(lambda f: f.reshape(*shape, *f.shape[1:]), feats)

    @staticmethod
    def _per_answers(by_k: dict, weight: jax.Array, below: float | None) -> jax.Array:
        """[U] the {k: value} entry at the largest k ≤ each user's number of answers in a [U, C]
        padded support (`fewshot.entry_at`, inside jit); `below` under every k (None: the smallest k's)."""
        n = jnp.sum((weight > 0).astype(jnp.float32), axis=-1)  # [U]
        ks = jnp.asarray(sorted(by_k), jnp.float32)
        values = jnp.asarray([float(by_k[k]) for k in sorted(by_k)], jnp.float32)
        index = jnp.searchsorted(ks, n, side="right") - 1
        picked = values[jnp.clip(index, 0, len(ks) - 1)]
        return picked if below is None else jnp.where(index >= 0, picked, below)

    def strength_for(self, weight: jax.Array) -> jax.Array:
        """[U] the few-shot prior setting for each user of a [U, C] padded support: the one the
        evaluation chose for the largest measured k not above the user's number of answers
        (`fewshot.strength_at`), or the run's single setting for artifacts that have no per-k choice."""
        if not self.prior_strength_by_k:
            return jnp.full(weight.shape[:1], self.prior_strength, jnp.float32)
        return self._per_answers(self.prior_strength_by_k, weight, below=None)

    def gate_for(self, weight: jax.Array) -> jax.Array:
        """[U] 1.0 where a user of a [U, C] padded support is personalized, 0.0 where the evaluation's
        gate (`fewshot.gate_at`) gives their number of answers the population (below every decided k
        too); all ones for artifacts without a gate."""
        if self.personalize_by_k is None:
            return jnp.ones(weight.shape[:1], jnp.float32)
        if not self.personalize_by_k:
            return jnp.zeros(weight.shape[:1], jnp.float32)
        return self._per_answers(self.personalize_by_k, weight, below=0.0)

    def gated_support(self, weight: jax.Array) -> jax.Array:
        """[U, C] support weights with the gate applied: a user the gate keeps at the population
        has no answers to infer from, so their state is the population's."""
        return weight * self.gate_for(weight)[:, None]

    def _infer_impl(self, params, e_x, has_prompt, e_a, e_b, label, weight):
        """[U, C] padded support -> [U, S] user states, by the evaluation protocol's few-shot inference."""
        model = nnx.merge(self.graphdef, params)
        strength = self.strength_for(weight)
        states, covs = base.infer_user_posterior(
            model, self.support_features(model, e_x, has_prompt, e_a, e_b), label, self.gated_support(weight),
            inference=self.inference, seen_users=self.seen_users, strength=strength,
            steps=self.inference_steps, learning_rate=self.inference_learning_rate,
        )
        return base.point_states(model, states, covs)

    def _rewards_impl(self, params, states, e_x, e_y):
        """states [S] or [B, S]; e_x None, [D] or [B, D]; e_y [N, D] or [B, N, D] -> [N] or [B, N] rewards.
        Broadcasting happens here, inside the compiled program, so a call costs one dispatch."""
        model = nnx.merge(self.graphdef, params)
        single = e_y.ndim == 2
        e_y = e_y[None] if single else e_y
        B, N = e_y.shape[:2]
        states = jnp.broadcast_to(states, (B, self.state_dim))
        if e_x is None:
            e_x, has_prompt = jnp.zeros((B, self.dim), jnp.float32), jnp.zeros((B,), bool)
        else:
            e_x, has_prompt = jnp.broadcast_to(e_x, (B, self.dim)), jnp.ones((B,), bool)
        r = model.rewards(states, e_x, has_prompt, e_y)  # [B, N]; prompt parts once per row where the model can
        return r[0] if single else r

    def _matrix_impl(self, params, state, e_x, has_prompt, e_y):
        """[S], [D], [] bool, [N, D] -> [N, N] logits of P(y_i ≻ y_j | x, u)."""
        model = nnx.merge(self.graphdef, params)
        return ranking.preference_logit_matrix(model, state, e_x, has_prompt, e_y)

    # ------------------------------------------------------------------ users
    def _padded_support(self, support: Support, capacity: int | None = None):
        capacity = capacity or self.capacity
        e_a = np.asarray(support.e_a, np.float32).reshape(-1, self.dim)
        e_b = np.asarray(support.e_b, np.float32).reshape(-1, self.dim)
        k = len(e_a)
        if k > capacity:
            raise ValueError(f"{k} support comparisons exceed capacity {capacity}; "
                             "build the reward with reward(capacity=...) large enough")
        if len(e_b) != k:
            raise ValueError(f"support e_a has {k} rows but e_b has {len(e_b)}")
        label = np.ones(k, np.float32) if support.label is None else np.asarray(support.label, np.float32).reshape(k)
        weight = np.ones(k, np.float32) if support.weight is None else np.asarray(support.weight, np.float32).reshape(k)
        if support.e_x is None:
            e_x, has_prompt = np.zeros((k, self.dim), np.float32), np.zeros(k, bool)
        else:
            e_x = np.broadcast_to(np.asarray(support.e_x, np.float32), (k, self.dim))
            has_prompt = np.ones(k, bool)
        return tuple(_pad_rows(x, capacity) for x in (e_x, has_prompt, e_a, e_b, label, weight))

    def infer(self, support: Support) -> jax.Array:
        """[S] the state of a new user from their comparisons (the evaluation protocol's inference)."""
        arrays = self._padded_support(support)
        return self.infer_padded(self.params, *(jnp.asarray(x)[None] for x in arrays))[0]

    def user_state(self, user: Any) -> jax.Array:
        """[S] the state of `user`: a known id, a `Support`, a `UserState` or a `StreamingUser` (`OnlineUser`)."""
        if isinstance(user, Support):
            return self.infer(user)
        if isinstance(user, UserState):
            vector = jnp.asarray(user.vector, jnp.float32)
            if vector.shape != (self.state_dim,):
                raise ValueError(f"UserState has shape {vector.shape}; {self.trained.name} states have shape ({self.state_dim},)")
            return vector
        if isinstance(user, StreamingUser):
            return user.state
        return self._seen_states_host[self.trained.user_row(user)]

    def user_states(self, users: Any) -> np.ndarray:
        """[B, S] states of a sequence of users."""
        return np.stack([np.asarray(self.user_state(u)) for u in users])

    # ------------------------------------------------------------------ rewards
    def _prompts(self, prompt, batch: int | None):
        if prompt is None:
            n = batch or 1
            return np.zeros((n, self.dim), np.float32), np.zeros((n,), bool)
        e_x = self._as_embeddings(prompt)
        return e_x, np.ones((e_x.shape[0],), bool)

    def _as_embeddings(self, x, keep_rank: bool = False):
        """Embeddings [..., D] as given (a [D] vector becomes [1, D] unless keep_rank), or texts
        embedded with the artifact's encoder."""
        if isinstance(x, str):
            x = self.embed_texts([x])[0]
        elif isinstance(x, (list, tuple)) and x and isinstance(x[0], (str, tuple)):
            x = self.embed_texts(list(x))
        if not isinstance(x, jax.Array):
            x = np.asarray(x, np.float32)
        elif x.dtype != jnp.float32:
            x = x.astype(jnp.float32)
        if x.shape[-1] != self.dim:
            raise ValueError(f"embeddings have size {x.shape[-1]}; this model was trained on D = {self.dim}")
        return x.reshape(1, self.dim) if x.ndim == 1 and not keep_rank else x

    def __call__(self, prompt, responses, user) -> jax.Array:
        """Rewards of `responses` for `user`.

        prompt: [D] (or None, or a text) with responses [N, D] -> [N];
        prompt: [B, D] or [D] (or None) with responses [B, N, D] and `user` one user or a list of B users -> [B, N].
        One jitted call per distinct set of shapes; a new N or B compiles once.
        """
        if not self.has_scalar_reward:
            raise TypeError(f"{self.trained.name} has no scalar reward (its preferences may be cyclic): use "
                            "preference_matrix(...), scores(...) or best_of_n(...)")
        e_y = self._as_embeddings(responses, keep_rank=True)
        if e_y.ndim not in (2, 3):
            raise ValueError(f"responses must be [N, D] or [B, N, D], got shape {e_y.shape}")
        e_x = None if prompt is None else self._as_embeddings(prompt, keep_rank=True)
        B = e_y.shape[0] if e_y.ndim == 3 else None
        if e_x is not None and e_x.ndim == 2 and e_x.shape[0] != B:
            raise ValueError(f"{e_x.shape[0]} prompts for {B or 'a single row of'} responses")
        if isinstance(user, (list, tuple)):
            if len(user) != B:
                raise ValueError(f"{len(user)} users for {B or 'a single row of'} responses")
            states = self.user_states(user)
        else:
            states = self.user_state(user)
        return self._rewards(self.params, states, e_x, e_y)

    def preference_matrix(self, prompt, responses, user) -> jax.Array:
        """[N, N] P(y_i ≻ y_j | x, user), diagonal 0.5, through the model's own pair logits (or
        its `preference_logit_matrix`, GPM's one-matrix-product form). Exact for every model,
        including GPM's skew-symmetric general preferences, which can be intransitive."""
        e_y = self._as_embeddings(responses)
        e_x, has_prompt = self._prompts(prompt, 1)
        return jax.nn.sigmoid(self._matrix(self.params, self.user_state(user), e_x[0], has_prompt[0], e_y))

    def scores(self, prompt, responses, user) -> np.ndarray:
        """[N] ranking scores of candidates for one prompt and user: the reward where the model has a
        scalar one, else (GPM) the average preference mean_{j≠i} P(y_i ≻ y_j) (the GPM paper's score)."""
        if self.has_scalar_reward:
            return np.asarray(self(prompt, responses, user))
        # ranking.average_preference is the same score, but summed in another order it moves the last
        # bit (2.98e-08 seen on GPM): kept as it was so no number changes.
        probs = np.asarray(self.preference_matrix(prompt, responses, user))
        N = probs.shape[0]
        return (probs.sum(axis=1) - np.diag(probs)) / max(N - 1, 1)

    def best_of_n(self, prompt, candidates, user) -> tuple[int, np.ndarray]:
        """(index of the best candidate, scores [N]) for one prompt and user (`scores`)."""
        r = self.scores(prompt, candidates, user)
        return int(np.argmax(r)), r

    def policy_reward_fn(self, user) -> RewardFn:
        """The hook for a policy-training loop: a pure function
        `fn(prompt_embeddings [B, D] | None, response_embeddings [B, D]) -> rewards [B]`
        for a fixed user, traceable inside the caller's own `jax.jit` (θ and φ_u are
        closed-over constants, so nothing is recomputed per call but the reward head)."""
        state = self.user_state(user)
        graphdef, params = self.graphdef, self.params

        def reward_fn(prompt_embeddings, response_embeddings):
            model = nnx.merge(graphdef, params)
            e_y = jnp.asarray(response_embeddings, jnp.float32)
            B = e_y.shape[0]
            if prompt_embeddings is None:
                e_x, has_prompt = jnp.zeros_like(e_y), jnp.zeros((B,), bool)
            else:
                e_x, has_prompt = jnp.asarray(prompt_embeddings, jnp.float32), jnp.ones((B,), bool)
            return model.reward(jnp.broadcast_to(state, (B, state.shape[0])), e_x, has_prompt, e_y)

        return reward_fn

    # ------------------------------------------------------------------ text
    def embed_texts(self, texts: Sequence[Any]) -> np.ndarray:
        """float32 [n, D] embeddings of texts (str or (prompt, response)) with the encoder the
        artifact's dataset was embedded with (meta.json `encoder`)."""
        if self._encoder is None:
            self._encoder = encoder_from_meta(self.trained.record.get("encoder"))
        return self._encoder.encode(list(texts))


def encoder_from_meta(entry: dict | None):
    """Rebuilds the frozen encoder a dataset's meta.json `encoder` entry describes."""
    if not entry:
        raise ValueError("this model's dataset records no encoder (meta.json has no 'encoder'): "
                         "pass embeddings, or PersonalizedReward(..., encoder=load_encoder(...))")
    from pluralign.embed.encoders import load_encoder

    kind = entry.get("kind")
    if kind == "wordllama":
        options = {"config": str(entry.get("model", "wordllama/l2_supercat")).split("/")[-1],
                   "normalize": bool(entry.get("normalize", False))}
        if "pair_separator" in entry:
            options["pair_separator"] = entry["pair_separator"]
        if entry.get("dim") not in (None, 256):  # a Matryoshka truncation of the 256-d weights
            options["trunc_dim"] = int(entry["dim"])
        return load_encoder("wordllama", **options)
    if kind == "transformers":
        keys = ("layer", "pooling", "dtype", "chat_template", "max_length", "truncation_side", "normalize", "pair_separator")
        return load_encoder("hf", model=entry["model"], **{k: entry[k] for k in keys if k in entry})
    raise ValueError(f"cannot load encoder {entry!r}: unknown kind {kind!r} (known: wordllama, transformers)")


def best_of_n(reward: PersonalizedReward, prompt, candidates, user) -> tuple[int, np.ndarray]:
    """(index of the best candidate for `user`, rewards [N]); see `PersonalizedReward.best_of_n`."""
    return reward.best_of_n(prompt, candidates, user)
