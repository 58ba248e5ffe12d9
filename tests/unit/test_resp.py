"""The request path's Redis client (gateway.store.resp): RESP framing, and against a private
redis-server: replies matched to callers, scripts, AUTH and SELECT, a connection killed under it."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from gateway.store.resp import _INCOMPLETE, ConnectionLost, Multiplexed, ReplyError, Script, encode, parse
from tests.redis_server import RedisServer

LOOP_FACTORIES = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert encode(["SET", "k", b"\x00\r\n", 12, 1.5]) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n\x00\r\n\r\n$2\r\n12\r\n$3\r\n1.5\r\n"
    )
    with pytest.raises(TypeError, match="not NoneType"):
        encode(["SET", None])


def test_replies_of_every_kind() -> None:
    data = b"+OK\r\n:-7\r\n$-1\r\n*-1\r\n$0\r\n\r\n*3\r\n:1\r\n$2\r\nab\r\n-WRONGTYPE no\r\n"
    values = []
    pos = 0
    while pos < len(data):
        value, pos = parse(data, pos)
        values.append(value)
    assert values[:5] == [b"OK", -7, None, None, b""]
    one, two, error = values[5]
    assert (one, two, type(error), str(error)) == (1, b"ab", ReplyError, "WRONGTYPE no")


@given(st.lists(st.one_of(st.binary(max_size=40), st.integers(-(2**63), 2**63 - 1)), max_size=8))
def test_a_reply_cut_anywhere_is_incomplete_until_it_is_whole(items: list[bytes | int]) -> None:
    reply = b"*%d\r\n" % len(items) + b"".join(
        b":%d\r\n" % item if isinstance(item, int) else b"$%d\r\n%s\r\n" % (len(item), item) for item in items
    )
    for cut in range(len(reply)):
        assert parse(reply[:cut], 0) == (_INCOMPLETE, 0)
    assert parse(reply, 0) == (items, len(reply))


async def test_many_callers_each_get_their_own_reply(redis_server: RedisServer) -> None:
    client = Multiplexed(redis_server.url, timeout=2)
    try:
        values = [b"v%d" % n * (n % 50 + 1) for n in range(500)]
        replies = await asyncio.gather(*(client.execute("ECHO", value) for value in values))
        assert replies == values
        big = b"x" * 3_000_000  # replies split over many reads
        assert await client.execute("ECHO", big) == big
    finally:
        client.close()


async def test_an_error_reply_fails_that_command_only(redis_server: RedisServer) -> None:
    client = Multiplexed(redis_server.url, timeout=2)
    try:
        await client.execute("SET", "s", "text")
        results = await asyncio.gather(
            client.execute("INCR", "s"), client.execute("GET", "s"), return_exceptions=True
        )
        assert isinstance(results[0], ReplyError) and "not an integer" in str(results[0])
        assert results[1] == b"text"
    finally:
        client.close()


async def test_scripts_run_by_digest_and_are_sent_whole_when_redis_forgot_them(
    redis_server: RedisServer,
) -> None:
    client = Multiplexed(redis_server.url, timeout=2)
    script = Script(client, "return redis.call('INCRBY', KEYS[1], ARGV[1])")
    try:
        assert await script(["n"], [2]) == 2  # NOSCRIPT first: sent whole, and cached by Redis
        assert await client.execute("SCRIPT", "EXISTS", script.sha) == [1]
        assert await script(["n"], [3]) == 5
        await client.execute("SCRIPT", "FLUSH")
        assert await script(["n"], [1]) == 6
    finally:
        client.close()


async def test_a_password_user_and_database_from_the_url(redis_server: RedisServer) -> None:
    admin = Multiplexed(redis_server.url, timeout=2)
    await admin.execute("ACL", "SETUSER", "app", "on", ">s3cret", "~*", "+@all")
    admin.close()
    client = Multiplexed(f"redis://app:s3cret@127.0.0.1:{redis_server.port}/3", timeout=2)
    wrong = Multiplexed(f"redis://app:nope@127.0.0.1:{redis_server.port}/3", timeout=2)
    other = aioredis.Redis(port=redis_server.port, db=3)
    try:
        await client.execute("SET", "where", "db3")
        assert await other.get("where") == b"db3"
        with pytest.raises(ReplyError, match="WRONGPASS"):
            await wrong.execute("GET", "where")
    finally:
        client.close()
        wrong.close()
        await other.aclose()


async def test_a_connection_killed_under_it_is_replaced(redis_server: RedisServer) -> None:
    client = Multiplexed(redis_server.url, timeout=2)
    other = aioredis.Redis(port=redis_server.port)
    try:
        await client.execute("CLIENT", "SETNAME", "lean")
        first = await client.execute("CLIENT", "ID")
        assert await other.client_kill_filter(_type="normal", skipme=True) >= 1
        # The next command finds the connection closed (now or on its write): it goes out again.
        assert await client.execute("INCR", "after-kill") == 1
        assert await client.execute("CLIENT", "ID") != first
    finally:
        client.close()
        await other.aclose()


async def test_commands_after_close_fail_and_open_no_connection(redis_server: RedisServer) -> None:
    client = Multiplexed(redis_server.url, timeout=2)
    other = aioredis.Redis(port=redis_server.port)
    try:
        await client.execute("CLIENT", "SETNAME", "lean")
        pending = asyncio.ensure_future(client.execute("BLPOP", "nothing", "1"))  # in flight at close
        await asyncio.sleep(0.05)
        client.close()
        with pytest.raises(ConnectionLost):
            await pending  # not sent again on a new connection
        with pytest.raises(ConnectionLost):
            await client.execute("PING")
        names = [c.get("name") for c in await other.client_list()]
        assert "lean" not in names and names.count("") <= 1, names
    finally:
        await other.aclose()
