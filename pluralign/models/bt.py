"""Bradley–Terry reward model: the non-personalized baseline (docs/design/equations.md).

    r_θ(x, y) = MLP([e_x; e_y]),    P(a ≻ b | x) = σ(r(x, a) − r(x, b))

Every user shares one reward, so BT can at best learn the population's majority
preference; it has no user state (S = 0) and its few-shot "adaptation" is a no-op.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from pluralign.models.base import MLP, Dims, NullPrompt, PairEmbeddings, PreferenceModel


@dataclasses.dataclass
class BTConfig:
    name: str = "bt"
    hidden: list[int] = dataclasses.field(default_factory=lambda: [64])


@dataclasses.dataclass(frozen=True)
class PopulationStage:
    """How a population-anchored model gets its shared reward r_θ (docs/design/equations.md, docs/design/evaluation-protocol.md): a BT with
    `config` is trained first on the same comparisons, with its own early stopping, copied into
    the model at `path` (() = the model's own BT attributes, as for subclasses of BT) and frozen
    while the user terms train. The model's population prediction is then BT's fit, not only BT's
    shape: trained jointly, the shared reward keeps fitting as long as the user terms improve
    (measured on the rail panel: BT's best epoch 1-2, lore's 6-11, VPL's ~60) and its population
    prediction fell 1-2 points below BT's."""

    config: BTConfig
    path: tuple[str, ...] = ()

    @property
    def frozen(self) -> tuple[tuple[str, ...], ...]:
        """The state paths of the shared reward, held fixed in the second stage."""
        return (self.path + ("reward_net",), self.path + ("null_prompt",))


class BT(PreferenceModel):
    logit_is_reward_difference = True
    user_state_dim = 0

    def __init__(self, config: BTConfig, dims: Dims, *, rngs: nnx.Rngs):
        self.null_prompt = NullPrompt(dims.dim, rngs=rngs)
        self.reward_net = MLP(2 * dims.dim, tuple(config.hidden), 1, rngs=rngs)

    def _reward(self, e_x, has_prompt, e_y):
        e_x = self.null_prompt(e_x, has_prompt)  # [B, D]
        return self.reward_net(jnp.concatenate([e_x, e_y], axis=-1))[:, 0]  # [B]

    def pair_features(self, pair: PairEmbeddings) -> jax.Array:
        # r(a) − r(b) does not depend on the user: it is the whole logit. The first layer
        # W [e_x; e_y] = W_x e_x + W_y e_y is split so the prompt half, shared by a and b,
        # is computed once per pair, and both responses go through W_y as one [2B] matmul:
        # 3/4 of the naive first-layer FLOPs, same function.
        first = self.reward_net.layers[0]
        kernel = first.kernel[...]  # [2D, H]
        dim = pair.e_a.shape[-1]
        prompt_part = self.null_prompt(pair.e_x, pair.has_prompt) @ kernel[:dim]  # [B, H]
        item_part = jnp.concatenate([pair.e_a, pair.e_b], axis=0) @ kernel[dim:] + first.bias[...][None]  # [2B, H]
        r = self.reward_net.after_first_layer(item_part + jnp.concatenate([prompt_part, prompt_part], axis=0))[:, 0]
        r_a, r_b = jnp.split(r, 2)
        return r_a - r_b

    def pair_logits(self, user_state: jax.Array, features: jax.Array) -> jax.Array:
        del user_state
        return features

    def reward(self, user_state, e_x, has_prompt, e_y):
        del user_state
        return self._reward(e_x, has_prompt, e_y)

    def rewards(self, user_state, e_x, has_prompt, e_y):
        """[B, S], [B, D], [B], [B, N, D] -> [B, N], the prompt half of the first layer once per row."""
        del user_state
        first = self.reward_net.layers[0]
        kernel = first.kernel[...]  # [2D, H]
        dim = e_y.shape[-1]
        prompt_part = self.null_prompt(e_x, has_prompt) @ kernel[:dim] + first.bias[...][None]  # [B, H]
        return self.reward_net.after_first_layer(prompt_part[:, None, :] + e_y @ kernel[dim:])[..., 0]
