"""RedisBackend.execute / run_script: the lean command path the per-request hot paths use.

Each test has a private redis-server (conftest's `private_redis`), so restarting it and flushing
its scripts disturbs no one else."""

from __future__ import annotations

import asyncio

import pytest
from private_services import PrivateRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from redis_backend import RedisBackend

INCREMENT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture
async def backend(private_redis: PrivateRedis) -> RedisBackend:
    return RedisBackend(private_redis.url)


async def test_execute_answers_as_redis_sent_it(backend: RedisBackend) -> None:
    assert await backend.execute("SET", "k", "v") == b"OK"
    assert await backend.execute("MGET", "k", "missing") == [b"v", None]
    await backend.close()


async def test_execute_reuses_its_own_connections(backend: RedisBackend) -> None:
    for _ in range(5):
        assert await backend.execute("PING") == b"PONG"
    assert len(backend._idle) == 1  # one connection served all five, one after another
    await asyncio.gather(*(backend.execute("PING") for _ in range(3)))
    assert len(backend._idle) == 3
    # the client's own pool is left to the rest (pub/sub, health checks)
    assert backend.client.connection_pool._available_connections == []
    await backend.close()
    assert backend._idle == []


async def test_a_command_that_timed_out_leaves_no_late_reply_behind(
    backend: RedisBackend,
) -> None:
    """BLPOP answers after 1 s, past the 0.5 s socket timeout; its late reply must not be read
    as the answer to the next command on that connection."""
    await backend.execute("RPUSH", "other", "x")
    with pytest.raises(RedisTimeoutError):
        await backend.execute("BLPOP", "empty", "1")
    await asyncio.sleep(0.7)  # the late reply (nil) has arrived by now
    assert await backend.execute("LPOP", "other") == b"x"
    assert await backend.execute("PING") == b"PONG"
    await backend.close()


async def test_a_cancelled_command_leaves_no_late_reply_behind(backend: RedisBackend) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(backend.execute("BLPOP", "empty", "0.3"), timeout=0.05)
    await asyncio.sleep(0.4)
    assert await backend.execute("ECHO", "mine") == b"mine"
    await backend.close()


async def test_run_script_loads_a_script_redis_has_forgotten(
    backend: RedisBackend, private_redis: PrivateRedis
) -> None:
    script = backend.client.register_script(INCREMENT)
    assert await backend.run_script(script, ["n"], [2]) == 2  # never loaded: NOSCRIPT, then load
    private_redis.client().script_flush()
    assert await backend.run_script(script, ["n"], [3]) == 5
    assert await backend.run_script(script, ["n"], [1]) == 6
    assert len(backend._idle) == 1  # an error reply (NOSCRIPT) leaves the connection in use
    await backend.close()


async def test_a_connection_redis_closed_is_retried_once(
    backend: RedisBackend, private_redis: PrivateRedis
) -> None:
    """After a restart every pooled connection is dead; the first command still succeeds."""
    # several pooled connections, all opened before the restart
    await asyncio.gather(*(backend.execute("PING") for _ in range(4)))
    assert len(backend._idle) >= 2
    private_redis.stop()
    private_redis.start()
    for _ in range(4):
        assert await backend.execute("PING") == b"PONG"
    await backend.close()


async def test_redis_down_is_an_error_not_a_hang(
    backend: RedisBackend, private_redis: PrivateRedis
) -> None:
    await backend.execute("PING")
    private_redis.stop()
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(backend.execute("PING"), timeout=5)
    await backend.close()


async def test_pipelined_commands_of_one_turn_share_one_round_trip(backend: RedisBackend) -> None:
    await backend.execute("SET", "k", "v")
    sent: list[int] = []
    original = backend._round_trip

    async def counting(connection, commands):  # type: ignore[no-untyped-def]
        sent.append(len(commands))
        return await original(connection, commands)

    backend._round_trip = counting  # type: ignore[method-assign]
    answers = await asyncio.gather(
        backend.pipelined("GET", "k"),
        backend.pipelined("INCR", "k"),  # an error reply fails its own command only
        backend.pipelined("ECHO", "x"),
        return_exceptions=True,
    )
    assert answers[0] == b"v" and answers[2] == b"x"
    assert isinstance(answers[1], ResponseError)
    assert sent == [3]  # one write, one connection
    assert await backend.pipelined("PING") == b"PONG"  # the connection is in step
    assert sent == [3, 1]
    assert len(backend._idle) == 1
    await backend.close()


async def test_a_cancelled_pipelined_caller_leaves_the_others_answered(
    backend: RedisBackend,
) -> None:
    slow = asyncio.ensure_future(backend.pipelined("ECHO", "a"))
    other = asyncio.ensure_future(backend.pipelined("ECHO", "b"))
    await asyncio.sleep(0)
    slow.cancel()
    assert await other == b"b"
    assert await backend.pipelined("ECHO", "c") == b"c"
    await backend.close()


async def test_pipelined_run_script_loads_a_forgotten_script(
    backend: RedisBackend, private_redis: PrivateRedis
) -> None:
    script = backend.client.register_script(INCREMENT)
    answers = await asyncio.gather(
        *(backend.run_script(script, ["n"], [1], pipelined=True) for _ in range(3))
    )
    assert sorted(answers) == [1, 2, 3]  # each NOSCRIPT retried once, each counted once
    await backend.close()


async def test_pipelined_on_redis_down_fails_every_caller(
    backend: RedisBackend, private_redis: PrivateRedis
) -> None:
    await backend.pipelined("PING")
    private_redis.stop()
    answers = await asyncio.wait_for(
        asyncio.gather(*(backend.pipelined("PING") for _ in range(3)), return_exceptions=True),
        timeout=5,
    )
    assert all(isinstance(answer, RedisConnectionError) for answer in answers)
    await backend.close()


async def test_a_pipelined_batch_past_the_socket_timeout_fails_and_leaves_no_late_reply(
    backend: RedisBackend,
) -> None:
    await backend.execute("RPUSH", "other", "x")
    answers = await asyncio.gather(
        backend.pipelined("ECHO", "first"),
        backend.pipelined("BLPOP", "empty", "1"),  # answers after 1 s, past the 0.5 s timeout
        return_exceptions=True,
    )
    assert answers[0] == b"first"
    assert isinstance(answers[1], RedisTimeoutError)
    await asyncio.sleep(0.7)  # the late reply (nil) has arrived by now
    assert await backend.pipelined("LPOP", "other") == b"x"
    await backend.close()
