"""The development stack's state directory: how a second terminal finds what ``crmcache up`` runs.

``<checkout>/.crmcache/`` (git-ignored; ``CRM_STATE_DIR`` names another), mode 0700, holding:

  stack.json    the running ``up``: its pid, and the variables that reach its parts (Redis URL,
                Wrapper URL and token, API keys, Flower login), with the API and Flower URLs.
                Written once every part is ready, removed when ``up`` stops.
  secrets.json  the secrets ``up`` generated (sandbox token, API keys, Flower login), kept
                across restarts so that keys copied from one session still work in the next;
                ``up --new-keys`` makes new ones.

Both files are mode 0600: they hold secrets. Every other ``crmcache`` command fills in the
variables of a running ``up`` that its environment does not set, and says so on stderr; what
the environment sets always wins, and a command aimed at another Redis ignores the state.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_DIR_VARIABLE = "CRM_STATE_DIR"
STATE_DIR_NAME = ".crmcache"
STACK_FILE = "stack.json"
SECRETS_FILE = "secrets.json"

REDIS_CHOICE = ("REDIS_URL", "REDIS_HOST")
"""Variables that point a command at a Redis: set to another one, the state is not used."""


def checkout_root() -> Path | None:
    """The repository the code runs from (it holds pyproject.toml); None for an installed copy."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def state_dir(environ: MutableMapping[str, str] | None = None) -> Path | None:
    environ = os.environ if environ is None else environ
    explicit = environ.get(STATE_DIR_VARIABLE)
    if explicit:
        return Path(explicit)
    root = checkout_root()
    return root / STATE_DIR_NAME if root else None


def _write_private(path: Path, value: dict[str, Any]) -> None:
    """Write JSON readable by its owner only: a temporary file made 0600, then renamed."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(value, out, indent=2)
    os.chmod(temporary, 0o600)  # in case it existed with other bits
    os.replace(temporary, path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def process_started(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (/proc/<pid>/stat); None where unknown.
    A pid and its start time name one process: a reused pid has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def process_alive(pid: int, started: int | None = None) -> bool:
    """Whether `pid` runs and, when `started` is given and /proc tells, is the process that
    started then (not a later process that reused the pid)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError) as exc:
        return isinstance(exc, PermissionError)  # it runs, as another user
    now = process_started(pid)
    return started is None or now is None or now == started


# --- secrets kept across restarts ----------------------------------------------------------------


@dataclass
class DevSecrets:
    """Secrets ``up`` generates when the environment gives none, remembered in secrets.json."""

    wrapper_token: str = ""
    api_keys: dict[str, str] = field(default_factory=dict)
    flower_auth: str = ""
    changed: bool = False

    @classmethod
    def load(cls, directory: Path | None, renew: bool) -> DevSecrets:
        stored = None if renew or directory is None else _read(directory / SECRETS_FILE)
        if not stored:
            return cls(changed=True)
        keys = stored.get("apiKeys")
        return cls(
            wrapper_token=str(stored.get("wrapperToken") or ""),
            api_keys={str(t): str(k) for t, k in keys.items()} if isinstance(keys, dict) else {},
            flower_auth=str(stored.get("flowerAuth") or ""),
        )

    def token(self) -> str:
        if not self.wrapper_token:
            self.wrapper_token, self.changed = secrets.token_urlsafe(18), True
        return self.wrapper_token

    def keys_for(self, tenants: list[str]) -> dict[str, str]:
        for tenant in tenants:
            if tenant not in self.api_keys:
                self.api_keys[tenant], self.changed = secrets.token_urlsafe(18), True
        return {tenant: self.api_keys[tenant] for tenant in tenants}

    def flower(self) -> str:
        if not self.flower_auth:
            self.flower_auth, self.changed = f"admin:{secrets.token_urlsafe(12)}", True
        return self.flower_auth

    def save(self, directory: Path | None) -> None:
        if directory is None or not self.changed:
            return
        value = {
            "wrapperToken": self.wrapper_token,
            "apiKeys": self.api_keys,
            "flowerAuth": self.flower_auth,
        }
        _write_private(directory / SECRETS_FILE, value)
        self.changed = False


# --- the running stack ---------------------------------------------------------------------------


def write_stack(directory: Path | None, facts: dict[str, Any]) -> Path | None:
    """Record the running stack (`facts` holds ``pid`` and ``env``); the file written."""
    if directory is None:
        return None
    path = directory / STACK_FILE
    _write_private(path, facts)
    return path


def remove_stack(directory: Path | None, pid: int) -> None:
    """Remove stack.json if it still describes `pid` (a later ``up`` may have replaced it)."""
    if directory is None:
        return
    path = directory / STACK_FILE
    facts = _read(path)
    if facts is not None and facts.get("pid") == pid:
        with contextlib.suppress(OSError):
            path.unlink()


def running_stack(directory: Path | None) -> dict[str, Any] | None:
    """stack.json's facts while the ``up`` that wrote it runs; None otherwise."""
    facts = None if directory is None else _read(directory / STACK_FILE)
    if facts is None or not isinstance(facts.get("env"), dict):
        return None
    pid, started = facts.get("pid"), facts.get("pidStarted")
    if not isinstance(pid, int) or not isinstance(started, int | None):
        return None
    return facts if process_alive(pid, started) else None


def use_running_stack(environ: MutableMapping[str, str]) -> str | None:
    """Fill in the running stack's variables that `environ` lacks; a line saying which, or None.

    A command whose environment names another Redis is aimed elsewhere: nothing is taken then.
    """
    directory = state_dir(environ)
    facts = running_stack(directory)
    if facts is None or directory is None:
        return None
    stack_env = {str(k): str(v) for k, v in facts["env"].items()}
    if any(environ.get(name) for name in REDIS_CHOICE) and environ.get(
        "REDIS_URL"
    ) != stack_env.get("REDIS_URL"):
        return None
    taken = [name for name in stack_env if name not in environ]
    for name in taken:
        environ[name] = stack_env[name]
    if not taken:
        return None
    where = _shown(directory / STACK_FILE)
    return (
        f"crmcache: using the dev stack of crmcache up (pid {facts['pid']}): "
        f"{', '.join(taken)} from {where} (set them to override)"
    )


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
