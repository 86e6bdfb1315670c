"""Downstream use of a trained model: the artifact (`save_model`, `load`), the personalized
reward function (`PersonalizedReward`, `best_of_n`, the policy hook), online users with
information-gain question selection, and user-embedding export."""

from __future__ import annotations

from pluralign.export.artifact import MODEL_DIR, TrainedModel, load, save_model
from pluralign.export.online import OnlineUser
from pluralign.export.reward import PersonalizedReward, RewardFn, Support, UserState, best_of_n, encoder_from_meta

# pluralign.export.users is also a command (`python -m pluralign.export.users`): importing it
# here, before runpy runs it as __main__, would make Python warn; its names load on first use.
_USERS = ("describe_user_states", "export_user_embeddings")


def __getattr__(name):
    if name in _USERS:
        from pluralign.export import users

        return getattr(users, name)
    raise AttributeError(f"module 'pluralign.export' has no attribute {name!r}")


__all__ = [
    "MODEL_DIR", "OnlineUser", "PersonalizedReward", "RewardFn", "Support", "TrainedModel", "UserState",
    "best_of_n", "describe_user_states", "encoder_from_meta", "export_user_embeddings", "load", "save_model",
]
