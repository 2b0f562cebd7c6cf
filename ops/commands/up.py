"""``crmcache up``: the whole stack in one command, for development and evaluation."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from config.settings import ConfigError, Settings
from ops.commands._banner import banner
from ops.commands._common import Exit
from ops.dev import devstate
from ops.dev.devstack import DevStack, StackOptions
from ops.dev.redis_server import ServerStartError
from ops.dev.stack import Interrupted, PartFailed

EPILOG = """\
Starts, as child processes sharing one environment:
  redis       embedded (a throwaway server on a free port, nothing on disk) unless REDIS_URL
              or REDIS_HOST is set
  sandbox     the development Wrapper (sample tenants acme and globex) unless WRAPPER_API_URL
              is set; change its data with curl -X PUT .../_admin/<tenant>/... to publish events
  worker      celery -A tasks worker (concurrency 2)     beat   celery -A tasks beat
  subscriber  crmcache subscribe                           api    crmcache api
  flower      crmcache flower (basic auth)
WRAPPER_API_TOKEN, CRM_API_KEYS and FLOWER_BASIC_AUTH are generated unless set, and kept for
the next start in .crmcache/secrets.json (--new-keys makes new ones); the API keys, the Flower
login and the sandbox token are printed. While it runs, .crmcache/stack.json tells every other
crmcache command of this checkout where the stack is (variables you set win). A usual port
(8080, 5555, 8081) that is taken is replaced by a free one, and the banner says so. Children's
logs go to stderr, prefixed with their name; CRM_LOG_LEVEL and CRM_LOG_FORMAT apply to all.

Ctrl-C or SIGTERM stops everything (SIGKILL after a grace period); no process is left, and
of its files only .crmcache/secrets.json stays (CRM_STATE_DIR names another directory).

exit codes: 0 stopped on request (or --demo --exit succeeded), 1 a part failed or exited, the
demo failed, or another crmcache up runs from this checkout, 2 bad usage or configuration
"""


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "up",
        help="run the whole stack (Redis, Wrapper sandbox, worker, beat, subscriber, API, Flower)",
        description="Run the whole crmcache stack on this machine until Ctrl-C.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="once up, drive a scripted scenario through the sandbox and the API",
    )
    parser.add_argument(
        "--exit", action="store_true", help="with --demo: stop the stack when the demo ends"
    )
    parser.add_argument("--api-port", type=int, help="HTTP API port (default 8080, else free)")
    parser.add_argument("--flower-port", type=int, help="Flower port (default 5555, else free)")
    parser.add_argument("--sandbox-port", type=int, help="sandbox port (default 8081, else free)")
    parser.add_argument("--no-flower", action="store_true", help="do not start Flower")
    parser.add_argument(
        "--new-keys",
        action="store_true",
        help="new API keys, Flower login and sandbox token instead of the remembered ones",
    )
    parser.add_argument(
        "--log-level",
        help="children's log level unless CRM_LOG_LEVEL is set (default INFO; WARNING with --demo)",
    )
    parser.add_argument(
        "--timeout", type=float, default=90.0, help="seconds to wait for every part to be ready"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the stack description (and demo) as JSON lines"
    )
    parser.set_defaults(handler=run)


class Console:
    """stdout for what the user asked for: text, or one JSON object per line."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def say(self, text: str) -> None:
        if not self.as_json:
            print(text, flush=True)

    def emit(self, event: dict[str, Any], text: str) -> None:
        print(json.dumps(event) if self.as_json else text, flush=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.exit and not args.demo:
        print("crmcache up: --exit only makes sense with --demo", file=sys.stderr)
        return Exit.USAGE
    options = StackOptions(
        api_port=args.api_port,
        flower_port=args.flower_port,
        sandbox_port=args.sandbox_port,
        flower=not args.no_flower,
        log_level=args.log_level or ("WARNING" if args.demo else "INFO"),
        startup_timeout=args.timeout,
        new_keys=args.new_keys,
    )
    running = devstate.running_stack(devstate.state_dir())
    if running is not None:
        print(
            f"crmcache up: another crmcache up (pid {running['pid']}) runs from this checkout; "
            f"stop it first, or give this one its own {devstate.STATE_DIR_VARIABLE}",
            file=sys.stderr,
        )
        return Exit.FAILED
    console = Console(args.json)
    stack = DevStack(options)
    restore = _install_signal_handlers(stack.supervisor.request_stop)
    try:
        return _run_stack(stack, args, console)
    finally:
        console.say("stopping...")
        devstate.remove_stack(stack.state_dir, os.getpid())
        killed = stack.stop()
        if killed:
            console.say(f"stopped ({', '.join(killed)} needed SIGKILL)")
        else:
            console.say("stopped; nothing left running")
        restore()


def _run_stack(stack: DevStack, args: argparse.Namespace, console: Console) -> int:
    if args.demo and _external_wrapper():
        print(
            "crmcache up: --demo drives the sandbox Wrapper; unset WRAPPER_API_URL", file=sys.stderr
        )
        return Exit.USAGE
    console.say("starting crmcache (Ctrl-C stops everything)...")
    try:
        stack.start()
        stack.wait_tenants_ready(30.0, stack.supervisor.stop_requested.is_set)
    except ConfigError as exc:
        print(f"crmcache up: {exc}", file=sys.stderr)
        return Exit.USAGE
    except ServerStartError as exc:
        print(f"crmcache up: cannot start an embedded Redis: {exc}", file=sys.stderr)
        return Exit.FAILED
    except PartFailed as exc:
        _report_failure(exc, console)
        return Exit.FAILED
    except Interrupted:
        return Exit.OK
    info = stack.info
    info.parts = stack.describe_parts()
    _record(stack)
    console.emit({"event": "up", **info.as_dict()}, banner(info, stack.active_subscriber()))
    if args.demo:
        code = _run_demo(stack, console)
        if args.exit or code != Exit.OK:
            return code
    dead = stack.supervisor.watch()
    if dead is not None:
        _report_failure(
            PartFailed(dead, f"{dead.name} exited with code {dead.exit_code()}"), console
        )
        return Exit.FAILED
    return Exit.OK


def _external_wrapper() -> bool:
    return bool(os.environ.get("WRAPPER_API_URL"))


def _record(stack: DevStack) -> None:
    """Tell the commands of other terminals where this stack is (ops/dev/devstate.py)."""
    info = stack.info
    facts = {
        "pid": os.getpid(),
        "pidStarted": devstate.process_started(os.getpid()),
        "env": stack.connection_env(),
        "apiUrl": info.api_url,
        "apiKeys": info.api_keys,
        "flowerUrl": info.flower_url,
        "wrapperUrl": info.wrapper_url,
    }
    written = devstate.write_stack(stack.state_dir, facts)
    info.state_file = str(written) if written else None


def _run_demo(stack: DevStack, console: Console) -> int:
    from ops.dev.demo import Demo, DemoFailed, render

    info = stack.info
    tenant = "acme" if "acme" in info.tenants else (info.tenants or ["acme"])[0]
    demo = Demo(
        wrapper_url=info.wrapper_url,
        wrapper_token=stack.env["WRAPPER_API_TOKEN"],
        api_url=info.api_url,
        api_key=info.api_keys.get(tenant),
        emit=lambda event: console.emit({"event": "demo", **event}, render(event)),
        should_stop=stack.supervisor.stop_requested.is_set,
        tenant=tenant,
    )
    try:
        demo.run()
    except (DemoFailed, OSError) as exc:
        if stack.supervisor.stop_requested.is_set():
            return Exit.OK
        try:
            stack.supervisor.check_alive()
        except PartFailed as dead:
            _report_failure(dead, console)
            return Exit.FAILED
        console.emit({"event": "demo-failed", "error": str(exc)}, f"demo failed: {exc}")
        return Exit.FAILED
    finally:
        demo.close()
    return Exit.OK


def _report_failure(exc: PartFailed, console: Console) -> None:
    tail = list(exc.part.tail)[-15:]
    text = f"crmcache up: {exc}" + "".join(f"\n  {exc.part.name} | {line}" for line in tail)
    console.emit({"event": "failed", "part": exc.part.name, "error": str(exc), "tail": tail}, text)


def _install_signal_handlers(stop: Callable[[], None]) -> Callable[[], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop()

    previous = {
        signum: signal.signal(signum, handler)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }

    def restore() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old)

    return restore
