"""Thin adapters of a trained pluralign run to RLHF frameworks, one module per framework, none of
which imports its framework: `trl` (a picklable reward function), `openrlhf` (`reward_func`, as a
remote reward server would answer) and `verl` (`compute_score`). They share `_common` (the
per-process model cache, user resolution, message flattening, batched scoring)."""
