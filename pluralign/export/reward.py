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

from pluralign.errors import InputError, InputTypeError
from pluralign.models import base, ranking

# The policy-loop hook's signature: (prompt embeddings [B, D] or None, response embeddings
# [B, D]) -> rewards [B]. Pure and traceable: it can be called inside a jitted policy step.
RewardFn = Callable[[jax.Array | None, jax.Array], jax.Array]


@dataclasses.dataclass
class Support:
    """k comparisons of one user: a preferred over b with probability `label`."""

    e_a: Any  # [k, D] embeddings or k texts (embedded with the run's encoder)
    e_b: Any  # [k, D] or k texts
    label: Any = None  # [k] P(a ≻ b) in [0, 1]; None = a was chosen (1.0)
    e_x: Any = None  # [k, D] or [D] prompt embeddings, k texts or one; None = no prompt
    weight: Any = None  # [k] finite, ≥ 0; None = 1

    def __len__(self) -> int:
        texts = text_shape(self.e_a)  # () one text, (k,) k texts
        if texts is not None:
            return texts[0] if texts else 1
        shape = np.shape(self.e_a)  # [k, D], or [D] for one comparison
        return int(shape[0]) if len(shape) != 1 or shape[0] == 0 else 1


@dataclasses.dataclass
class UserState:
    """An explicit user state φ [S] (DPA: a direction over the attributes)."""

    vector: Any


class StreamingUser:
    """A user whose state is kept up to date elsewhere as their comparisons arrive
    (`pluralign.export.OnlineUser`); a `PersonalizedReward` scores them with their current `state`."""

    state: jax.Array  # [S]


def text_shape(x: Any, name: str = "texts") -> tuple[int, ...] | None:
    """The shape of `x` as texts — () for one text (a str), (n,) for a list of n, (B, N) for B lists
    of N — or None when `x` is not texts (embeddings). Inside a list a (prompt, response) tuple of two
    str is one text, as the encoders take it. Decided by the first leaf; a ragged nest is an error."""
    if isinstance(x, str):
        return ()
    if not isinstance(x, (list, tuple)) or not x:
        return None
    leaf = x
    while isinstance(leaf, (list, tuple)) and leaf and not _is_pair(leaf):
        leaf = leaf[0]
    if not (isinstance(leaf, str) or _is_pair(leaf)):
        return None
    return _nested_shape(x, name)


def _is_pair(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and all(isinstance(s, str) for s in x)


def _nested_shape(x: Any, name: str) -> tuple[int, ...]:
    if isinstance(x, str) or _is_pair(x):
        return ()
    if not isinstance(x, (list, tuple)):
        raise InputTypeError(f"{name}: expected texts, found {type(x).__name__} among them")
    shapes = {_nested_shape(v, name) for v in x}
    if len(shapes) > 1:
        raise InputError(f"{name}: texts are ragged: sublists of shapes {sorted(shapes)}")
    return (len(x), *(shapes.pop() if shapes else ()))


def _flatten(x: Any) -> list:
    return [x] if isinstance(x, str) or _is_pair(x) else [t for v in x for t in _flatten(v)]


def check_finite(x: np.ndarray, name: str) -> np.ndarray:
    """`x`, or an InputError naming the first non-finite entry."""
    bad = ~np.isfinite(x)
    if bad.any():
        where = np.unravel_index(int(np.argmax(bad)), x.shape)
        raise InputError(f"{name}: {x[where]} at index {list(map(int, where))} is not finite")
    return x


def _numbers(x: Any, name: str) -> np.ndarray:
    """float32 host array of `x` (numbers; a jax or numpy array), or an InputTypeError naming `name`."""
    try:
        return np.asarray(x, np.float32)
    except (TypeError, ValueError) as e:
        raise InputTypeError(f"{name}: expected numbers (embeddings) or texts, got {type(x).__name__} "
                             f"({str(e).splitlines()[0]})") from None


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
        self.residual_ratio = float((fewshot.get("residual_ratio_by_mode") or {}).get(self.split_mode, 1.0))
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
            steps=self.inference_steps, learning_rate=self.inference_learning_rate, residual_ratio=self.residual_ratio,
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

    # ------------------------------------------------------------------ inputs
    def embeddings(self, x: Any, name: str, ndims: Sequence[int] = (1, 2), prompt: Any = None,
                   is_prompt: bool = False) -> Any:
        """float32 embeddings [..., D] of `x`: numbers as given (numpy, jax, lists), or texts (a str, a
        (prompt, response) pair, nested lists of them) embedded with the run's encoder — each with its
        `prompt` text (one, or one per leading row) where the run embedded items as (prompt, response)
        conversations (`items_with_prompt`; prompts themselves, `is_prompt`, are embedded alone).
        Checked: rank in `ndims`, last size D, finite; else an `InputError` naming `name`."""
        shape = text_shape(x, name)
        if shape is not None:
            texts = _flatten(x)
            if self.items_with_prompt and not is_prompt:
                texts = self._with_prompts(texts, shape, prompt, name)
            e = np.asarray(self.embed_texts(texts), np.float32).reshape(*shape, -1)
        elif isinstance(x, jax.Array):
            e = x if x.dtype == jnp.float32 else x.astype(jnp.float32)
        else:
            e = _numbers(x, name)
        if e.ndim == 1 and e.size == 0 and 2 in ndims:  # [] : no rows
            e = e.reshape(0, self.dim)
        if e.ndim not in ndims or e.shape[-1] != self.dim:
            expected = " or ".join({1: "[D]", 2: "[n, D]", 3: "[B, N, D]"}[n] for n in ndims)
            raise InputError(f"{name}: shape {tuple(e.shape)}; expected {expected} embeddings with D = {self.dim} "
                             f"(this model's size), or texts")
        if not bool(jnp.isfinite(e).all() if isinstance(e, jax.Array) else np.isfinite(e).all()):
            check_finite(np.asarray(e), name)
        return e

    @property
    def items_with_prompt(self) -> bool:
        """Whether the run's items were embedded as (prompt, response) conversations (`embed_with_prompt`)."""
        config = self.trained.record.get("data_config") or {}
        return bool(config.get("embed_with_prompt") or self.trained.dataset_meta.get("embed_with_prompt"))

    def _with_prompts(self, texts: list, shape: tuple, prompt: Any, name: str) -> list:
        """Response texts as (prompt, response) pairs, the prompt texts broadcast over trailing axes."""
        prompt_shape = None if prompt is None else text_shape(prompt)
        if prompt_shape is None or prompt_shape != shape[:len(prompt_shape)]:
            raise InputError(f"{name}: this model's items were embedded together with their prompts "
                             "(embed_with_prompt); pass the prompt as text too, one per row of responses")
        prompts = np.repeat(np.asarray(_flatten(prompt), object), int(np.prod(shape[len(prompt_shape):], dtype=int)))
        return [t if isinstance(t, tuple) else (p, t) for p, t in zip(prompts, texts)]

    def support_arrays(self, support: Support, where: str = "Support.") -> tuple[np.ndarray, ...]:
        """(e_x [k, D], has_prompt [k], e_a [k, D], e_b [k, D], label [k], weight [k]) of a support, each
        checked (texts embedded; [k, D] of this model's D; finite; label in [0, 1]; weight ≥ 0), so a
        bad one is an `InputError` naming the field rather than NaN rewards or a silent reshape."""
        if not isinstance(support, Support):
            raise InputTypeError(f"support: expected a pluralign.export.Support, got {type(support).__name__}")
        prompt = support.e_x if support.e_x is not None and text_shape(support.e_x) is not None else None
        e_a = np.asarray(self.embeddings(support.e_a, f"{where}e_a", prompt=prompt)).reshape(-1, self.dim)
        e_b = np.asarray(self.embeddings(support.e_b, f"{where}e_b", prompt=prompt)).reshape(-1, self.dim)
        k = len(e_a)
        if len(e_b) != k:
            raise InputError(f"{where}e_b: {len(e_b)} rows but {where}e_a has {k}")
        label = self._per_comparison(support.label, k, f"{where}label")
        bad = ~((label >= 0) & (label <= 1))
        if bad.any():
            raise InputError(f"{where}label: {label[bad.argmax()]} at index {int(bad.argmax())} is outside [0, 1] "
                             "(a label is the probability that a is preferred to b)")
        weight = self._per_comparison(support.weight, k, f"{where}weight")
        if (weight < 0).any():
            raise InputError(f"{where}weight: {weight[(weight < 0).argmax()]} at index {int((weight < 0).argmax())} "
                             "is negative (weights must be finite and ≥ 0)")
        if support.e_x is None:
            e_x, has_prompt = np.zeros((k, self.dim), np.float32), np.zeros(k, bool)
        else:
            e_x = np.asarray(self.embeddings(support.e_x, f"{where}e_x", is_prompt=True))
            if e_x.ndim == 2 and len(e_x) != k:
                raise InputError(f"{where}e_x: {len(e_x)} prompts for {k} comparisons (give one, or one per comparison)")
            e_x, has_prompt = np.broadcast_to(e_x, (k, self.dim)), np.ones(k, bool)
        return e_x, has_prompt, e_a, e_b, label, weight

    @staticmethod
    def _per_comparison(x: Any, k: int, name: str) -> np.ndarray:
        """float32 [k] of a per-comparison number (None: 1; one number: the same for all), finite."""
        if x is None:
            return np.ones(k, np.float32)
        if text_shape(x, name) is not None:
            raise InputTypeError(f"{name}: expected numbers, got texts")
        values = _numbers(x, name)
        if values.shape not in ((), (k,)):
            raise InputError(f"{name}: shape {values.shape} for {k} comparisons; expected one number or [{k}]")
        return check_finite(np.broadcast_to(values, (k,)).copy(), name)

    # ------------------------------------------------------------------ users
    def _padded_support(self, support: Support, capacity: int | None = None):
        capacity = capacity or self.capacity
        arrays = self.support_arrays(support)
        k = len(arrays[0])
        if k > capacity:
            raise InputError(f"Support: {k} support comparisons exceed capacity {capacity}; "
                             "build the reward with reward(capacity=...) large enough")
        return tuple(_pad_rows(x, capacity) for x in arrays)

    def infer(self, support: Support) -> jax.Array:
        """[S] the state of a new user from their comparisons (the evaluation protocol's inference)."""
        arrays = self._padded_support(support)
        return self.infer_padded(self.params, *(jnp.asarray(x)[None] for x in arrays))[0]

    def user_state(self, user: Any) -> jax.Array:
        """[S] the state of `user`: a known id, a `Support`, a `UserState` or a `StreamingUser` (`OnlineUser`)."""
        if isinstance(user, Support):
            return self.infer(user)
        if isinstance(user, UserState):
            vector = user.vector if isinstance(user.vector, jax.Array) else _numbers(user.vector, "UserState.vector")
            vector = jnp.asarray(vector, jnp.float32)
            if vector.shape != (self.state_dim,):
                raise InputError(f"UserState has shape {vector.shape}; {self.trained.name} states have shape ({self.state_dim},)")
            if not bool(jnp.isfinite(vector).all()):
                check_finite(np.asarray(vector), "UserState.vector")
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
        e_x = self._as_embeddings(prompt, name="prompt", is_prompt=True)
        return e_x, np.ones((e_x.shape[0],), bool)

    def _as_embeddings(self, x, keep_rank: bool = False, name: str = "responses", prompt: Any = None,
                       is_prompt: bool = False):
        """Embeddings [..., D] as given (a [D] vector becomes [1, D] unless keep_rank), or texts
        embedded with the artifact's encoder (`embeddings`, which checks them)."""
        x = self.embeddings(x, name, (1, 2, 3), prompt=prompt, is_prompt=is_prompt)
        return x.reshape(1, self.dim) if x.ndim == 1 and not keep_rank else x

    def __call__(self, prompt, responses, user) -> jax.Array:
        """Rewards of `responses` for `user`.

        prompt: [D] (or None, or a text) with responses [N, D] (or N texts) -> [N];
        prompt: [B, D] or [D] (or None, or B texts) with responses [B, N, D] (or B lists of N texts) and
        `user` one user or a list of B users -> [B, N].
        One jitted call per distinct set of shapes; a new N or B compiles once.
        """
        if not self.has_scalar_reward:
            raise TypeError(f"{self.trained.name} has no scalar reward (its preferences may be cyclic): use "
                            "preference_matrix(...), scores(...) or best_of_n(...)")
        e_y = self._as_embeddings(responses, keep_rank=True, prompt=prompt)
        if e_y.ndim not in (2, 3):
            raise InputError(f"responses: expected [N, D] or [B, N, D] (or N texts, or B lists of N), got shape {tuple(e_y.shape)}")
        e_x = None if prompt is None else self._as_embeddings(prompt, keep_rank=True, name="prompt", is_prompt=True)
        B = e_y.shape[0] if e_y.ndim == 3 else None
        if e_x is not None and e_x.ndim == 2 and e_x.shape[0] != B:
            raise InputError(f"prompt: {e_x.shape[0]} prompts for {B or 'a single row of'} responses")
        if e_x is not None and e_x.ndim == 3:
            raise InputError(f"prompt: expected [D] or [B, D], got shape {tuple(e_x.shape)}")
        if isinstance(user, (list, tuple)):
            if len(user) != B:
                raise InputError(f"user: {len(user)} users for {B or 'a single row of'} responses")
            states = self.user_states(user)
        else:
            states = self.user_state(user)
        return self._rewards(self.params, states, e_x, e_y)

    def preference_matrix(self, prompt, responses, user) -> jax.Array:
        """[N, N] P(y_i ≻ y_j | x, user), diagonal 0.5, through the model's own pair logits (or
        its `preference_logit_matrix`, GPM's one-matrix-product form). Exact for every model,
        including GPM's skew-symmetric general preferences, which can be intransitive."""
        e_y = self.embeddings(responses, "responses", (2,), prompt=prompt)
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
        candidates = self.embeddings(candidates, "candidates", (2,), prompt=prompt)  # checked: N finite rows
        r = self.scores(prompt, candidates, user)
        if not np.isfinite(r).all():  # inputs are checked, so this is the model's own overflow
            raise FloatingPointError(f"{self.trained.name}: non-finite score for candidate {int((~np.isfinite(r)).argmax())}")
        return int(np.argmax(r)), r

    def policy_reward_fn(self, user) -> RewardFn:
        """The hook for a policy-training loop: a pure function
        `fn(prompt_embeddings [B, D] | None, response_embeddings [B, D]) -> rewards [B]`
        for a fixed user, traceable inside the caller's own `jax.jit` (θ and φ_u are
        closed-over constants, so nothing is recomputed per call but the reward head).
        Called outside jit it also takes texts (B prompts, B responses), embedded with the run's
        encoder; a PyTorch loop takes `torch_reward_fn`."""
        state = self.user_state(user)
        graphdef, params = self.graphdef, self.params

        def reward_fn(prompt_embeddings, response_embeddings):
            model = nnx.merge(graphdef, params)
            if text_shape(response_embeddings) is not None:
                response_embeddings = self.embeddings(response_embeddings, "responses", (2,), prompt=prompt_embeddings)
            if prompt_embeddings is not None and text_shape(prompt_embeddings) is not None:
                prompt_embeddings = self.embeddings(prompt_embeddings, "prompt", (2,), is_prompt=True)
            e_y = jnp.asarray(response_embeddings, jnp.float32)
            B = e_y.shape[0]
            if prompt_embeddings is None:
                e_x, has_prompt = jnp.zeros_like(e_y), jnp.zeros((B,), bool)
            else:
                e_x, has_prompt = jnp.asarray(prompt_embeddings, jnp.float32), jnp.ones((B,), bool)
            return model.reward(jnp.broadcast_to(state, (B, state.shape[0])), e_x, has_prompt, e_y)

        return reward_fn

    def torch_reward_fn(self, user, device: Any = None):
        """The policy hook for a PyTorch loop: `fn(prompts, responses) -> torch.Tensor [B]` where
        prompts are None, B texts or a [B, D] tensor and responses B texts or a [B, D] tensor
        (`pluralign.integrations.pytorch.policy_reward_fn`)."""
        from pluralign.integrations.pytorch import policy_reward_fn

        return policy_reward_fn(self, user, device=device)

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
