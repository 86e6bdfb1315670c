"""Helpers of the reward input tests: a deterministic stand-in text encoder."""

from __future__ import annotations

import hashlib

import numpy as np

from pluralign.embed.encoders import Encoder


class HashEncoder(Encoder):
    """Texts -> fixed pseudo-random [8] vectors (a (prompt, response) pair is its own text)."""

    dim = 8

    def describe(self) -> dict:
        return {"kind": "hash", "dim": self.dim}

    def _encode_batch(self, texts: list) -> np.ndarray:
        rows = []
        for text in texts:
            key = "\x00".join(text) if isinstance(text, tuple) else text
            seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).normal(size=self.dim))
        return np.asarray(rows, np.float32).reshape(len(rows), self.dim)
