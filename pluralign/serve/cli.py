"""`pluralign serve RUN_DIR`: serve a run's personalized reward over HTTP (see `pluralign.serve.app`).

    pluralign serve runs/pal_a                              # http://127.0.0.1:8000, open (loopback only)
    pluralign serve runs/pal_a --port 0 --token "$TOKEN"    # a free port, printed; Bearer token required
    pluralign serve runs/pal_a --tokenizer /models/qwen     # strip that tokenizer's special tokens (OpenRLHF)

Loads the run (and replays the answers log) before listening; prints one line
`pluralign serve: listening on http://HOST:PORT ...` once its socket listens.
"""

from __future__ import annotations

import argparse
import socket
import sys

from pluralign.integrations._common import UNKNOWN_POLICIES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pluralign serve", description="Serve a pluralign run's personalized reward over HTTP.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (or its model/ artifact directory)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: a free one, printed at start)")
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' on every endpoint but /health")
    p.add_argument("--unknown-user", choices=UNKNOWN_POLICIES, default="population",
                   help="reward for a user neither seen nor answered: the population's, null, or a 404")
    p.add_argument("--seed", type=int, default=None, help="which training seed's model (default: the run's first)")
    p.add_argument("--capacity", type=int, default=64, help="answers one new user can give (support buffer size)")
    p.add_argument("--split-mode", default=None, help="few-shot prior chosen in this split mode (default: the run's)")
    p.add_argument("--max-batch", type=int, default=1024, help="samples scored in one model call, at most")
    p.add_argument("--max-request", type=int, default=4096, help="samples (or answers) in one request, at most")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="request body size limit in MiB")
    p.add_argument("--answers", default=None, help="answers log (default RUN_DIR/serve/answers.jsonl)")
    p.add_argument("--tokenizer", default=None, help="a local Hugging Face tokenizer whose special tokens are removed from queries")
    p.add_argument("--special-token", action="append", default=[], help="a string removed from queries (repeatable)")
    p.add_argument("--no-prompt", action="store_true", help="score responses alone (a run trained without prompts)")
    return p


def special_tokens(tokenizer: str | None, extra: list[str]) -> tuple[str, ...]:
    tokens = list(extra)
    if tokenizer is not None:
        from transformers import AutoTokenizer

        tokens += AutoTokenizer.from_pretrained(tokenizer, local_files_only=True).all_special_tokens
    return tuple(dict.fromkeys(t for t in tokens if t))


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    try:
        import uvicorn

        from pluralign.serve.app import ServeConfig, create_app
    except ImportError as e:
        sys.exit(f"pluralign serve: {e.name} is not installed: pip install 'pluralign[serve]'")
    from pluralign.integrations._common import RewardOptions
    from pluralign.serve.service import RewardService

    try:
        service = RewardService(args.run_dir, options=RewardOptions(seed=args.seed, capacity=args.capacity, split_mode=args.split_mode),
                                unknown_user=args.unknown_user, answers_path=args.answers)
        config = ServeConfig(token=args.token, max_batch=args.max_batch, max_request_samples=args.max_request,
                             max_body_bytes=int(args.max_body_mb * (1 << 20)),
                             special_tokens=special_tokens(args.tokenizer, args.special_token), use_prompt=not args.no_prompt)
        sock = socket.create_server((args.host, args.port))
    except (ValueError, OSError) as e:
        sys.exit(f"pluralign serve: error: {e}")
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(create_app(service, config), log_level="warning", access_log=False))
    # The socket already listens: a client connecting now waits in its backlog until uvicorn accepts.
    print(f"pluralign serve: listening on http://{host}:{port} (run {service.name}, "
          f"{len(service.answers)} users with logged answers)", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
