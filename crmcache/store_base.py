"""What every store module shares: the Lua script registry, the translation of redis-py errors
into ``StoreUnavailable``, Redis text decoding and the clock, and ``StoreBase``, the client
holder each store module's commands build on."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import redis
from redis.commands.core import AsyncScript, Script

from crmcache import keyspace
from crmcache.errors import StoreUnavailable

if TYPE_CHECKING:
    import redis.asyncio

_registered: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_registered_lock = threading.Lock()


def _registered_script(client: Any, name: str) -> Any:
    scripts = _registered.get(client)
    script = scripts.get(name) if scripts is not None else None
    if script is None:
        with _registered_lock:
            scripts = _registered.setdefault(client, {})
            script = scripts.get(name)
            if script is None:
                script = client.register_script(keyspace.lua_source(name))
                scripts[name] = script
    return script


def lua_script(client: redis.Redis, name: str) -> Script:
    """``crmcache/lua/<name>.lua`` registered on ``client`` (EVALSHA, EVAL on NOSCRIPT). The
    process's one script registry: the write side, the readers and the HTTP API share it."""
    script: Script = _registered_script(client, name)
    return script


def async_lua_script(client: redis.asyncio.Redis, name: str) -> AsyncScript:
    """``lua_script`` for an asyncio client (the HTTP API's event loop)."""
    script: AsyncScript = _registered_script(client, name)
    return script


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn redis-py's connection failures into the project's StoreUnavailable."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis unavailable: {exc}") from None


def text(value: bytes | str, errors: str = "strict") -> str:
    """A Redis reply (bytes from a client without ``decode_responses``) as text; ``errors``
    as for ``bytes.decode`` ("replace" where a value may not be ours, e.g. a dead letter)."""
    return value.decode("utf-8", errors) if isinstance(value, bytes) else value


def text_map(raw: dict[Any, Any]) -> dict[str, str]:
    """A hash reply (HGETALL, a stream entry's fields) as text."""
    return {text(k): text(v) for k, v in raw.items()}


def text_pairs(flat: list[Any]) -> dict[str, str]:
    """A flat ``[field, value, ...]`` reply (HGETALL inside a Lua script) as text."""
    parts = [text(part) for part in flat]
    return dict(zip(parts[::2], parts[1::2], strict=True))


def now_ms() -> int:
    return int(time.time() * 1000)


class StoreBase:
    """Holds the client; the store modules' command groups are methods on its subclasses."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def script(self, name: str) -> Script:
        """The registered Lua script ``crmcache/lua/<name>.lua`` (EVALSHA, EVAL on NOSCRIPT)."""
        return lua_script(self.redis, name)
