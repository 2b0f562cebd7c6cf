"""The house rules, read off the product code's imports and definitions (ast, no import run):
layers only import downwards, no import circle at run time, inside consumer the subscriber does
not load the read client or the HTTP API, no module over 400 lines, no function over 50."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("config", "crmcache", "tasks", "consumer", "ops", "sandbox")
LAYER = {"config": 0, "crmcache": 1, "sandbox": 1, "tasks": 2, "consumer": 3, "ops": 4}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 50


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def runtime_imports(path: Path, known: set[str]) -> set[str]:
    """Our modules imported at run time (not under ``if TYPE_CHECKING``, not inside a function:
    a lazy import is how a module keeps a heavy or upper dependency off its import path)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {n for n in names if n in known}
    return found


def test_layers_only_import_downwards() -> None:
    mods = modules()
    wrong = []
    for name, path in mods.items():
        top = name.split(".")[0]
        for target in runtime_imports(path, set(mods)):
            if LAYER[target.split(".")[0]] > LAYER[top]:
                wrong.append(f"{name} -> {target}")
            if name.startswith("consumer.ingest") and target.startswith(
                ("consumer.read", "consumer.api")
            ):
                wrong.append(f"{name} -> {target} (the subscriber must not load the read stack)")
    assert not wrong, wrong


def test_no_import_circle() -> None:
    mods = modules()
    graph = {name: runtime_imports(path, set(mods)) - {name} for name, path in mods.items()}
    # a package's __init__ that re-exports its modules is not a circle with them
    graph = {
        n: {t for t in ts if not (t == n.rsplit(".", 1)[0] and t in mods)}
        for n, ts in graph.items()
    }
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in graph.get(node, ()):
            if state.get(target) == 1:
                circles.append(
                    [*trail[trail.index(target) :], target] if target in trail else [node, target]
                )
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert not circles, circles


def test_modules_and_functions_stay_small() -> None:
    too_big = []
    for name, path in modules().items():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_big.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_big.append(f"{name}.{node.name}: {length} lines")
    assert not too_big, too_big


def test_the_subscriber_does_not_import_the_read_stack_or_fastapi() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import consumer.ingest.subscriber"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "consumer.ingest.subscriber" in imported
    heavy = sorted(
        m for m in imported if m.startswith(("consumer.read", "consumer.api", "fastapi"))
    )
    assert not heavy, heavy
