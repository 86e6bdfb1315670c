"""A pluralign reward as the reward hook of a PyTorch policy-training loop.

    fn = pluralign.load(run_dir).reward().torch_reward_fn(user)
    rewards = fn(prompts, responses)   # torch.float32 [B], on the responses' device

`prompts` are None, B texts or a [B, D] tensor of prompt embeddings; `responses` B texts or a
[B, D] tensor of response embeddings (any float dtype, any device). Texts are embedded with the
run's encoder; the rewards come from the one jitted `PersonalizedReward` call for a fixed user
(the same numbers as `reward(prompts, responses[:, None], user)[:, 0]`). The reward is a frozen
scalar for the policy's RL objective: no gradient flows back into the embeddings. torch is
imported here only, when the hook is built (STYLE 16).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from pluralign.errors import InputTypeError


def policy_reward_fn(reward: Any, user: Any, device: Any = None) -> Callable:
    """`fn(prompts, responses) -> torch.Tensor [B]` for `user` (an id, a `Support`, a `UserState`, ...),
    its state resolved once. Rewards go to the responses' device, or `device` (default CPU) for texts."""
    import torch

    from pluralign.export.reward import UserState, text_shape

    state = UserState(np.asarray(reward.user_state(user), np.float32))

    def host(x: Any, name: str) -> Any:
        """[B, D] host embeddings of a tensor, or the B texts as they are."""
        if isinstance(x, torch.Tensor):
            if x.ndim != 2:
                raise InputTypeError(f"{name}: expected a [B, D] tensor, got shape {tuple(x.shape)}")
            return x.detach().to("cpu", torch.float32).numpy()
        if text_shape(x) is not None and len(text_shape(x)) == 1:
            return list(x)
        raise InputTypeError(f"{name}: expected B texts (a list) or a [B, D] torch.Tensor, got {type(x).__name__}")

    def reward_fn(prompts: Any, responses: Any) -> "torch.Tensor":
        out = responses.device if isinstance(responses, torch.Tensor) else torch.device(device or "cpu")
        e_y = host(responses, "responses")
        one_each = [[t] for t in e_y] if isinstance(e_y, list) else e_y[:, None, :]  # [B, 1, ...]: one response per prompt
        r = reward(None if prompts is None else host(prompts, "prompt"), one_each, state)
        return torch.from_numpy(np.asarray(r, np.float32)[:, 0].copy()).to(out)

    return reward_fn
