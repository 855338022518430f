"""MicroBatcher: concurrent requests share calls and each gets its own results."""

import asyncio

import pytest

from tuneops.serving.batching import MicroBatcher


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_concurrent_requests_within_the_wait_share_one_call() -> None:
    calls: list[list[str]] = []

    def predict(texts: list[str]) -> list[str]:
        calls.append(list(texts))
        return [t.upper() for t in texts]

    async def scenario() -> list[list[str]]:
        batcher = MicroBatcher(predict, max_batch=100, wait_s=0.2)
        await batcher.start()
        try:
            requests = [["a"], ["b", "c"], ["d"], ["e", "f", "g"]]
            return await asyncio.gather(*(batcher.predict(r) for r in requests))
        finally:
            await batcher.stop()

    assert run(scenario()) == [["A"], ["B", "C"], ["D"], ["E", "F", "G"]]
    assert calls == [["a", "b", "c", "d", "e", "f", "g"]]


def test_max_batch_closes_a_batch_and_zero_wait_turns_batching_off() -> None:
    calls: list[int] = []

    def predict(texts: list[str]) -> list[int]:
        calls.append(len(texts))
        return [len(t) for t in texts]

    async def scenario(wait_s: float) -> list[list[int]]:
        batcher = MicroBatcher(predict, max_batch=2, wait_s=wait_s)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.predict(["x" * n]) for n in range(1, 6)))
        finally:
            await batcher.stop()

    assert run(scenario(0.2)) == [[1], [2], [3], [4], [5]]
    assert calls == [2, 2, 1]
    calls.clear()
    assert run(scenario(0.0)) == [[1], [2], [3], [4], [5]]
    assert calls == [1, 1, 1, 1, 1]


def test_a_failing_call_fails_every_request_in_its_batch_and_the_next_batch_works() -> None:
    def predict(texts: list[str]) -> list[str]:
        if "boom" in texts:
            raise RuntimeError("model failed")
        return texts

    async def scenario() -> tuple[list[BaseException | list[str]], list[str]]:
        batcher = MicroBatcher(predict, max_batch=10, wait_s=0.1)
        await batcher.start()
        try:
            first = await asyncio.gather(
                batcher.predict(["boom"]), batcher.predict(["ok"]), return_exceptions=True
            )
            return first, await batcher.predict(["later"])
        finally:
            await batcher.stop()

    first, later = run(scenario())
    assert all(isinstance(r, RuntimeError) for r in first)
    assert later == ["later"]


@pytest.mark.parametrize("wait_s", [0.0, 0.05])
def test_results_keep_request_order_within_a_request(wait_s: float) -> None:
    async def scenario() -> list[str]:
        batcher = MicroBatcher(lambda ts: [t[::-1] for t in ts], max_batch=32, wait_s=wait_s)
        await batcher.start()
        try:
            return await batcher.predict(["abc", "de", "f"])
        finally:
            await batcher.stop()

    assert run(scenario()) == ["cba", "ed", "f"]
