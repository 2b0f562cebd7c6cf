"""The Lua scripts as Redis receives them: each one self-contained (every ``--@include`` of a
shared function in crmcache/lua/lib spliced in by ``keyspace.lua_source``), and each one
accepted by a real Redis (SCRIPT LOAD compiles it)."""

from __future__ import annotations

import re
from importlib import resources

import pytest
import redis

from crmcache import keyspace

LUA = resources.files("crmcache").joinpath("lua")
SCRIPTS = sorted(p.name[: -len(".lua")] for p in LUA.iterdir() if p.name.endswith(".lua"))
INCLUDE = re.compile(r"^--@include (\w+)$", re.MULTILINE)


def test_the_scripts_that_share_a_step_include_it() -> None:
    including = {
        name for name in SCRIPTS if INCLUDE.search(LUA.joinpath(f"{name}.lua").read_text())
    }
    assert {"deduct_credits", "credit_holds", "read_cost", "read_access"} <= including


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_reaches_redis_whole(name: str, r: redis.Redis) -> None:
    # given the script's file, when lua_source hands it to Redis
    source = keyspace.lua_source(name)
    # then nothing is left to include, every included function is defined in it once
    assert not INCLUDE.search(source)
    for lib in INCLUDE.findall(LUA.joinpath(f"{name}.lua").read_text()):
        for function in re.findall(
            r"^local function (\w+)", LUA.joinpath("lib", f"{lib}.lua").read_text(), re.M
        ):
            assert len(re.findall(rf"^local function {function}\b", source, re.M)) == 1, function
    # and Redis compiles it
    assert r.script_load(source)
