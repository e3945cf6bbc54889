"""The runtime's writes to the queue (kubeagents.tasks), each one Lua script, so a task's result
and its acknowledgement can never disagree:

- `begin`: mark an attempt running, unless the task already has a final result (then the
  message is acknowledged and skipped: a finished task never runs again);
- `finish`: write the final result, acknowledge, drop the checkpoint — in that order, atomically,
  and only if no final result exists yet (so it is written exactly once); for a task of a team
  run, the same script appends it to the completion stream `…:tasks:done`;
- `retry`: record the error, schedule the next attempt in the delayed set, acknowledge;
- `bury`: final status `dead`, copy the message and its error to the dead-letter stream,
  acknowledge (and append a run's task to `…:tasks:done`);
- `release_due`: move attempts whose time has come from the delayed set to the stream.

The scripts name the consumer group `runtime` (kubeagents.tasks.GROUP) literally.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kubeagents.redis_link import RedisLink
from kubeagents.tasks import RESULT_TTL_SECONDS, STREAM_MAX_LEN, QueueKeys

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
# Appends a finished task of a run to the completion stream KEYS[done] (id ARGV[id]).
_DONE = """
local function announce(done_key, task_id)
  local run, step, status = unpack(redis.call('HMGET', KEYS[2], 'run', 'step', 'status'))
  if run and run ~= '' then
    redis.call('XADD', done_key, 'MAXLEN', '~', 100000, '*', 'id', task_id, 'run', run,
      'step', step or '', 'status', status, 'finished_at', now)
  end
end
"""
# Every script below has KEYS[1] = the stream, KEYS[2] = the result, ARGV[1] = the message id.
_FINAL = """
local function already_final()
  local s = redis.call('HGET', KEYS[2], 'status')
  if s == 'succeeded' or s == 'failed' or s == 'dead' then
    redis.call('XACK', KEYS[1], 'runtime', ARGV[1])
    return true
  end
  return false
end
"""

# KEYS: stream, result  ARGV: message id, worker, attempt
_BEGIN = (
    _NOW
    + _FINAL
    + """
if already_final() then return 0 end
redis.call('HSET', KEYS[2], 'status', 'running', 'worker', ARGV[2], 'attempts', ARGV[3],
  'started_at', now)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""
)

# KEYS: stream, result, checkpoint, done
# ARGV: message id, ttl, task id, field, value, field, value, ...
_FINISH = (
    _NOW
    + _FINAL
    + _DONE
    + """
if already_final() then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[2], 'finished_at', now)
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('XACK', KEYS[1], 'runtime', ARGV[1])
redis.call('DEL', KEYS[3])
announce(KEYS[4], ARGV[3])
return 1
"""
)

# KEYS: stream, result, delayed  ARGV: message id, delay ms, next message (JSON), error, attempts
_RETRY = (
    _NOW
    + _FINAL
    + """
if already_final() then return 0 end
redis.call('HSET', KEYS[2], 'status', 'retrying', 'error', ARGV[4], 'attempts', ARGV[5])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[3])
redis.call('XACK', KEYS[1], 'runtime', ARGV[1])
return 1
"""
)

# KEYS: stream, result, dead, checkpoint, done
# ARGV: message id, ttl, error, attempts, task id, field, value...
_BURY = (
    _NOW
    + _FINAL
    + _DONE
    + """
if already_final() then return 0 end
redis.call('HSET', KEYS[2], 'status', 'dead', 'error', ARGV[3], 'attempts', ARGV[4],
  'finished_at', now)
redis.call('EXPIRE', KEYS[2], ARGV[2])
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
fields[#fields + 1] = 'error'
fields[#fields + 1] = ARGV[3]
fields[#fields + 1] = 'failed_at'
fields[#fields + 1] = now
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 100000, '*', unpack(fields))
redis.call('XACK', KEYS[1], 'runtime', ARGV[1])
redis.call('DEL', KEYS[4])
announce(KEYS[5], ARGV[5])
return 1
"""
)

# KEYS: stream, delayed  ARGV: max stream length, batch
_RELEASE_DUE = (
    _NOW
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, encoded in ipairs(due) do
  local message = cjson.decode(encoded)
  local fields = {}
  for name, value in pairs(message) do
    fields[#fields + 1] = name
    fields[#fields + 1] = tostring(value)
  end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
  redis.call('ZREM', KEYS[2], encoded)
end
return #due
"""
)


def _flat(fields: Mapping[str, Any]) -> list[str]:
    flat: list[str] = []
    for name, value in fields.items():
        flat += [name, value if isinstance(value, str) else json.dumps(value)]
    return flat


class TaskStore:
    def __init__(self, link: RedisLink, keys: QueueKeys) -> None:
        self.keys = keys
        self._begin = link.register_script(_BEGIN)
        self._finish = link.register_script(_FINISH)
        self._retry = link.register_script(_RETRY)
        self._bury = link.register_script(_BURY)
        self._release_due = link.register_script(_RELEASE_DUE)

    async def begin(self, message_id: str, task_id: str, *, worker: str, attempt: int) -> bool:
        """Whether to run this attempt (False: the task has a final result; acknowledged)."""
        done = await self._begin(
            keys=[self.keys.stream, self.keys.result(task_id)],
            args=[message_id, worker, attempt, RESULT_TTL_SECONDS],
        )
        return bool(done)

    async def finish(self, message_id: str, task_id: str, result: Mapping[str, Any]) -> bool:
        """Write the final result and acknowledge; False when one existed (nothing written)."""
        written = await self._finish(
            keys=[
                self.keys.stream,
                self.keys.result(task_id),
                self.keys.checkpoint(task_id),
                self.keys.done,
            ],
            args=[message_id, RESULT_TTL_SECONDS, task_id, *_flat(result)],
        )
        return bool(written)

    async def retry(
        self,
        message_id: str,
        task_id: str,
        *,
        next_message: Mapping[str, str],
        delay_ms: int,
        error: str,
        attempts: int,
    ) -> bool:
        scheduled = await self._retry(
            keys=[self.keys.stream, self.keys.result(task_id), self.keys.delayed],
            args=[message_id, delay_ms, json.dumps(dict(next_message)), error, attempts],
        )
        return bool(scheduled)

    async def bury(
        self,
        message_id: str,
        task_id: str,
        *,
        message: Mapping[str, str],
        error: str,
        attempts: int,
    ) -> bool:
        buried = await self._bury(
            keys=[
                self.keys.stream,
                self.keys.result(task_id),
                self.keys.dead,
                self.keys.checkpoint(task_id),
                self.keys.done,
            ],
            args=[message_id, RESULT_TTL_SECONDS, error, attempts, task_id, *_flat(message)],
        )
        return bool(buried)

    async def release_due(self, *, batch: int = 100) -> int:
        moved = await self._release_due(
            keys=[self.keys.stream, self.keys.delayed], args=[STREAM_MAX_LEN, batch]
        )
        return int(moved)
