"""Provenance: what results.json and model.json record about the software and the machine."""

from __future__ import annotations

import jax

import pluralign
from pluralign.provenance import provenance


def test_provenance_names_versions_device_and_command():
    record = provenance()
    assert record["pluralign"] == pluralign.__version__
    assert record["versions"]["jax"] == jax.__version__
    assert record["versions"]["flax"] and record["versions"]["optax"]
    assert record["devices"]["kind"] == jax.devices()[0].device_kind and record["backend"] == jax.default_backend()
    assert isinstance(record["command"], list) and record["platform"]
    # a git checkout gives its commit (40 hex digits, "-dirty" with local changes); a wheel gives None
    assert record["git_commit"] is None or len(record["git_commit"].removesuffix("-dirty")) == 40
