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


def test_parts_are_capped_while_whole_texts_are_about_and_take_every_slot_otherwise():
    async def main():
        slots = RequestSlots(4, low_cap=1, grace_s=0.2)
        samples: list[tuple[float, int]] = []  # (time, parts holding a slot)
        loop = asyncio.get_running_loop()

        async def monitor():
            while True:
                samples.append((loop.time(), slots.low_held))
                await asyncio.sleep(0.001)

        async def request(priority, seconds):
            async with slots.hold(priority):
                await asyncio.sleep(seconds)

        watch = asyncio.create_task(monitor())
        first = [asyncio.create_task(request(1, 0.02)) for _ in range(8)]  # a long document alone
        await asyncio.sleep(0.01)
        alone_peak = slots.low_held
        # Two batches of whole texts with a gap between them shorter than the grace, and more
        # parts queued all along.
        more = [asyncio.create_task(request(1, 0.02)) for _ in range(8)]
        await asyncio.gather(*[asyncio.create_task(request(0, 0.01)) for _ in range(8)])
        capped_from = loop.time()  # the parts let in before the whole texts came are done by now
        await asyncio.sleep(0.03)  # the gap
        await asyncio.gather(*[asyncio.create_task(request(0, 0.01)) for _ in range(8)])
        capped_until = loop.time()
        await asyncio.gather(*first, *more)
        await asyncio.sleep(0.3)  # past the grace: parts take every slot again
        last = [asyncio.create_task(request(1, 0.02)) for _ in range(8)]
        await asyncio.sleep(0.005)
        after_peak = slots.low_held
        await asyncio.gather(*last)
        watch.cancel()
        capped = [held for t, held in samples if capped_from <= t <= capped_until]
        return alone_peak, after_peak, capped, slots

    alone_peak, after_peak, capped, slots = asyncio.run(main())
    assert alone_peak == 4 and after_peak == 4  # no whole texts about: every slot
    assert len(capped) > 10 and max(capped) <= 1  # whole texts about, the gap included: at most low_cap
    assert slots.free == 4 and slots.low_held == 0 and slots.high_held == 0
