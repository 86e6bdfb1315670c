"""`pluralign serve RUN_DIR`: a run's personalized reward as an HTTP server (the `serve` extra).

`app` is the HTTP face (OpenRLHF's `/get_reward` and a native API), `service` what it does
without HTTP, `batching` how concurrent requests share model calls, `answers` the append-only
log that keeps new users' answers across restarts, `cli` the command line.
"""
