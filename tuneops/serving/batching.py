"""Micro-batching: texts from concurrent requests share one onnxruntime call.

Written by hand because it is a few lines of asyncio and no well-kept library does it
for a plain function: the first waiting request opens a batch; requests arriving within
`wait_s` (or until `max_batch` texts) join it; the batch runs in a worker thread so the
event loop keeps accepting requests meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any


class MicroBatcher:
    def __init__(
        self, predict: Callable[[list[str]], Sequence[Any]], max_batch: int, wait_s: float
    ) -> None:
        self._predict = predict
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: asyncio.Queue[tuple[list[str], asyncio.Future[list[Any]]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        # What GET /stats reports: model calls made, texts they scored, the largest call.
        self.calls = 0
        self.texts = 0
        self.largest_call = 0

    def _counted(self, texts: list[str]) -> Sequence[Any]:
        self.calls += 1
        self.texts += len(texts)
        self.largest_call = max(self.largest_call, len(texts))
        return self._predict(texts)

    async def start(self) -> None:
        if self.wait_s > 0:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def predict(self, texts: list[str]) -> list[Any]:
        if self._queue is None:  # batching off: one call per request
            return list(await asyncio.to_thread(self._counted, texts))
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        await self._queue.put((texts, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0][0])
            deadline = loop.time() + self.wait_s
            while size < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
                batch.append(item)
                size += len(item[0])
            await self._execute(batch)

    async def _execute(self, batch: list[tuple[list[str], asyncio.Future[list[Any]]]]) -> None:
        texts = [text for request_texts, _ in batch for text in request_texts]
        try:
            results = list(await asyncio.to_thread(self._counted, texts))
        except Exception as exc:  # every waiting request gets the error, the loop goes on
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for request_texts, future in batch:
            if not future.done():  # a client that went away cancelled its future
                future.set_result(results[start : start + len(request_texts)])
            start += len(request_texts)
