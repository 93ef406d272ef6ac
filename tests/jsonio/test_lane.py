"""The low-priority lane: bulk work waits for idle moments, and makes room for
interactive work by leaving the CPU idle after each piece while it is recent."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient

from tests.support import nothing_happens_within, wait_until
from tornado_jsonservlet import JsonResponseMixin
from tornado_jsonservlet.jsonio.lane import LowPriorityLane, lane_for_running_loop

pytestmark = pytest.mark.gen_test

#: Long enough that no scheduling noise on a loaded CI machine can hide the pause.
PIECE = 0.05


def spin(seconds: float) -> float:
    """Hold the CPU (as an encoder would) for ``seconds``; returns when it ended."""
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        pass
    return time.perf_counter()


async def gap_between_two_pieces(lane: LowPriorityLane) -> float:
    first_ended = await lane.run(lambda: spin(PIECE))
    second_started = await lane.run(time.perf_counter)
    return second_started - first_ended


async def test_without_interactive_work_pieces_follow_each_other() -> None:
    lane = LowPriorityLane()
    assert not lane.yielding_to_interactive
    assert await gap_between_two_pieces(lane) < PIECE


async def test_after_interactive_work_the_lane_idles_as_long_as_a_piece_took() -> None:
    lane = LowPriorityLane(max_wait=1.0)  # bulk_share 0.5: idle as long as the piece ran
    lane.note_interactive()
    assert lane.yielding_to_interactive
    assert await gap_between_two_pieces(lane) >= PIECE


async def test_a_piece_is_handed_back_at_once_the_pause_comes_before_the_next() -> None:
    lane = LowPriorityLane()
    lane.note_interactive()
    ended = await lane.run(lambda: spin(PIECE))  # the last piece of a response, say
    assert time.perf_counter() - ended < PIECE


async def test_a_caller_cancelled_during_the_pause_runs_no_work() -> None:
    lane = LowPriorityLane(max_wait=1.0)
    lane.note_interactive()
    await lane.run(lambda: spin(PIECE))
    ran: list[bool] = []
    waiting = asyncio.ensure_future(lane.run(lambda: ran.append(True)))
    # It holds the lane's lock, sleeping through the pause (PIECE long) before its work.
    await wait_until(lane._lock.locked, what="the caller waiting in the pause", interval=0.001)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert ran == []
    assert await lane.run(lambda: "next") == "next"  # the lane is free again


async def test_bulk_share_sets_the_length_of_the_pause() -> None:
    lane = LowPriorityLane(bulk_share=0.2, max_wait=1.0)  # idle 4x as long as the piece
    lane.note_interactive()
    assert await gap_between_two_pieces(lane) >= 4 * PIECE


async def test_the_pause_is_at_most_max_wait_however_long_a_piece_took() -> None:
    lane = LowPriorityLane(max_wait=0.01)
    lane.note_interactive()
    first_ended = await lane.run(lambda: spin(0.3))  # a piece stalled (GC, preemption)
    second_started = await lane.run(time.perf_counter)
    assert second_started - first_ended < 0.15  # not the 0.3 s the share would ask


def test_bulk_share_set_later_is_checked_too() -> None:
    lane = LowPriorityLane()
    lane.bulk_share = 1.0
    assert lane.bulk_share == 1.0
    with pytest.raises(ValueError, match="bulk_share"):
        lane.bulk_share = 0.0
    assert lane.bulk_share == 1.0


async def test_bulk_share_one_turns_the_pause_off() -> None:
    lane = LowPriorityLane(bulk_share=1.0)
    lane.note_interactive()
    assert await gap_between_two_pieces(lane) < PIECE


async def test_politeness_ends_after_the_window() -> None:
    lane = LowPriorityLane(interactive_window=0.02)
    lane.note_interactive()
    await nothing_happens_within(0.03, what="interactive work (the window is 0.02 s)")
    assert not lane.yielding_to_interactive
    assert await gap_between_two_pieces(lane) < PIECE


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_bulk_share_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="bulk_share"):
        LowPriorityLane(bulk_share=share)


class SmallJson(JsonResponseMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        await self.write_json({"ok": True})


class BigJson(JsonResponseMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        await self.write_json([{"id": i, "name": f"item-{i}"} for i in range(20_000)])


@pytest.fixture
def app() -> tornado.web.Application:
    return tornado.web.Application([(r"/small", SmallJson), (r"/big", BigJson)])


async def test_a_small_write_json_response_makes_the_lane_yield(
    http_server: object, base_url: str
) -> None:
    lane = lane_for_running_loop()
    lane.interactive_window = 60.0  # no stall on a busy machine can end it too early
    client = AsyncHTTPClient()
    big = await client.fetch(base_url + "/big")
    assert len(json.loads(big.body)) == 20_000
    assert not lane.yielding_to_interactive  # bulk is not interactive
    small = await client.fetch(base_url + "/small")
    assert json.loads(small.body) == {"ok": True}
    assert lane.yielding_to_interactive


async def test_big_response_is_complete_while_small_ones_keep_the_lane_polite(
    http_server: object, base_url: str
) -> None:
    lane = lane_for_running_loop()
    # A CI stall longer than the 50 ms window between a small response and the check
    # would read "not polite" though the lane was; the window is not what is tested.
    lane.interactive_window = 60.0
    # Polite from the start: otherwise a quiet lane (128 KB slices, no pause) may
    # finish the big response before the first small one is back, and nothing
    # would have been observed (seen on a CI run).
    lane.note_interactive()
    client = AsyncHTTPClient()
    big = asyncio.ensure_future(client.fetch(base_url + "/big"))
    polite_while_big_ran = 0
    while not big.done():
        assert json.loads((await client.fetch(base_url + "/small")).body) == {"ok": True}
        polite_while_big_ran += lane.yielding_to_interactive and not big.done()
    assert len(json.loads(big.result().body)) == 20_000
    # The big response was served beside a stream of small ones, with the lane polite.
    assert polite_while_big_ran >= 1


async def test_big_responses_take_smaller_slices_while_interactive_work_is_recent(
    http_server: object, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quiet: 128 KB slices, the fewest trips round the lane. Interactive: 32 KB,
    so a small request waits less for the slice in progress."""
    pieces = 0
    run = LowPriorityLane.run

    async def counted(self: LowPriorityLane, work: Any) -> Any:
        nonlocal pieces
        pieces += 1
        return await run(self, work)

    monkeypatch.setattr(LowPriorityLane, "run", counted)
    client = AsyncHTTPClient()
    quiet = await client.fetch(base_url + "/big")
    quiet_pieces, pieces = pieces, 0
    lane = lane_for_running_loop()
    lane.interactive_window = 60.0  # stays interactive for the whole response
    lane.note_interactive()
    polite = await client.fetch(base_url + "/big")
    assert polite.body == quiet.body
    assert len(quiet.body) > 4 * 128 * 1024  # several slices even when quiet
    assert pieces >= 3 * quiet_pieces, (pieces, quiet_pieces)


def test_each_loop_keeps_its_own_lane_when_loops_alternate() -> None:
    """The lane of the last loop asked for is remembered; another loop still gets its own."""

    async def lane_now() -> LowPriorityLane:
        return lane_for_running_loop()

    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        lane_one = first.run_until_complete(lane_now())
        lane_two = second.run_until_complete(lane_now())
        assert lane_one is not lane_two
        assert first.run_until_complete(lane_now()) is lane_one
        assert second.run_until_complete(lane_now()) is lane_two
        assert second.run_until_complete(lane_now()) is lane_two
    finally:
        first.close()
        second.close()
