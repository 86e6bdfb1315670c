"""The one place pluralign chooses a matplotlib backend.

Every figure pluralign writes is a file (reports, user-embedding plots, active-learning
curves), never a window: `pyplot()` selects the non-interactive Agg backend before
importing pyplot, so plotting works on headless machines and cluster nodes.
"""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the Agg (file-only) backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
