"""Requests of concurrent callers batched into one model call.

The server's model work — encoding, scoring, inferring users — runs on one thread, in order. A
request waiting to be scored joins a queue; whenever the model thread is free it takes every
request waiting (up to `max_batch` samples) and scores them in one call. An idle server scores a
lone request at once (no added wait); a busy one scores larger batches, which is what makes many
small requests (OpenRLHF sends one per rollout sample) cheap. One request's bad input fails that
request only (`RewardService.score` returns its exception in its place).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Callable, Sequence


class Batcher:
    """`await submit(job, size)` -> `process([jobs])`'s entry for `job`, on the one model thread."""

    def __init__(self, process: Callable[[Sequence[Any]], list], max_batch: int):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}; expected at least 1")
        self.process, self.max_batch = process, max_batch
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pluralign-model")
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.batches = self.samples = 0  # served so far, for /health

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.worker = asyncio.create_task(self._serve())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
        self.executor.shutdown(wait=True)

    async def run(self, fn: Callable, *args: Any) -> Any:
        """fn(*args) on the model thread, in turn with the batches."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def submit(self, job: Any, size: int) -> Any:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((job, size, future))
        return await future

    async def _serve(self) -> None:
        while True:
            waiting = [await self.queue.get()]
            size = waiting[0][1]
            while size < self.max_batch and not self.queue.empty():
                waiting.append(self.queue.get_nowait())
                size += waiting[-1][1]
            try:
                results = await self.run(self.process, [job for job, _, _ in waiting])
            except Exception as e:  # a fault of the server, not of one request: every caller hears it
                results = [e] * len(waiting)
            self.batches, self.samples = self.batches + 1, self.samples + size
            for (_, _, future), result in zip(waiting, results):
                if future.cancelled():  # the caller went away
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
