"""The engine's request limit: at most n holders, waiters let in by (priority, arrival),
cancelled waiters skipped. Pure asyncio, no engine."""

import asyncio

from pipeline.engine.engine import RequestSlots


def test_limit_priority_and_cancellation():
    async def main():
        slots = RequestSlots(2)
        order, peak, holding = [], 0, 0

        async def request(name, priority):
            nonlocal peak, holding
            async with slots.hold(priority):
                holding += 1
                peak = max(peak, holding)
                order.append(name)
                await asyncio.sleep(0.005)
                holding -= 1

        parts = [asyncio.create_task(request(f"part{i}", 1)) for i in range(6)]
        await asyncio.sleep(0)  # two parts hold the slots, four wait
        rows = [asyncio.create_task(request(f"row{i}", 0)) for i in range(3)]
        gone = asyncio.create_task(request("gone", 0))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(*parts, *rows, gone, return_exceptions=True)
        return order, peak, slots.free

    order, peak, free = asyncio.run(main())
    # Whole texts overtake the queued parts; parts keep their own order; the limit holds.
    assert order == ["part0", "part1", "row0", "row1", "row2", "part2", "part3", "part4", "part5"]
    assert peak == 2 and free == 2  # every slot given back, the cancelled waiter's too
