"""How many users a figure rests on, and what may honestly be said with so few.

A 12-user table under the default 70/10/20 split leaves 2 unseen-test users and 1 unseen-val
user: an unseen-user accuracy is then an anecdote, a bootstrap "95% interval over users" drawn
from 2 users is meaningless, and the prior and gate are decided on one user. The run records
a warning (log and results.json `warnings`), and reports show no interval over users below
`MIN_USERS_FOR_INTERVAL`, saying why.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# Below this many unseen-val or unseen-test users the run warns: unseen-user figures (and the
# decisions taken on unseen-val users) vary a lot from one split to another.
MIN_USERS = 20
# Below this many users no interval over users is shown: a bootstrap over fewer users mostly
# measures which users happened to be drawn.
MIN_USERS_FOR_INTERVAL = 10


def split_warnings(n_users: dict) -> list[str]:
    """Warnings for a user split with few held-out users (`n_users`: results.json's counts of
    seen / unseen_val / unseen_test users); each is also logged."""
    warnings = []
    uses = {"unseen_test": "the unseen-user figures are measured on them",
            "unseen_val": "the prior scale and personalization gate are decided on them"}
    for part, use in uses.items():
        n = n_users.get(part, 0)
        if 0 < n < MIN_USERS:  # none at all is a choice (eval=deploy trains on every user), not a small sample
            interval = f"; no interval over users is shown below {MIN_USERS_FOR_INTERVAL}" if n < MIN_USERS_FOR_INTERVAL else ""
            warnings.append(f"only {n} {part.replace('_', '-')} user(s) (fewer than {MIN_USERS}): {use}, so they are "
                            f"rough{interval}; add users or raise eval.{part}_fraction")
    for warning in warnings:
        log.warning("small sample: %s", warning)
    return warnings


def too_few_for_interval(n_users: int | None) -> str | None:
    """Why no interval over users is shown for a figure on `n_users` users; None when one is."""
    if n_users is None or n_users >= MIN_USERS_FOR_INTERVAL:
        return None
    return f"no interval: {n_users} user(s), fewer than {MIN_USERS_FOR_INTERVAL}"
