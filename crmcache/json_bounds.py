"""Nesting depth of untrusted JSON, checked before the decoder recurses into it.

Python's JSON decoder recurses once per nested array or object: a 6 KB ``[[[[...]]]]`` raises
``RecursionError`` out of ``json.loads``. ``exceeds_depth`` finds a document nested deeper than
a limit without decoding it; ``tree_exceeds_depth`` does the same for an already decoded value
(a task body that kombu decoded).
"""

from __future__ import annotations

import re
from itertools import accumulate

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
"""A JSON string, escapes included: the brackets inside it are text."""
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
_STEP = tuple(1 if c == ord("[") else -1 if c == ord("]") else 0 for c in range(256))


def exceeds_depth(text: str, limit: int) -> bool:
    """True when the JSON `text` nests arrays and objects more than `limit` deep.

    Exact for valid JSON. For invalid JSON it never answers False when the decoder would go
    deeper than `limit` before failing: strings are skipped the way the decoder reads them.
    """
    # Micro-optimization: nearly every event has fewer brackets than the limit, so it cannot be
    # nested deeper, and two str.count calls spare the scan below.
    if text.count("[") + text.count("{") <= limit:
        return False
    # Without escapes, every other piece between quotes is a string (split runs at C speed).
    outside = "".join(text.split('"')[::2]) if "\\" not in text else _STRING.sub("", text)
    # Valid JSON is ASCII outside its strings; one kind of bracket nests like two.
    brackets = outside.encode("ascii", "ignore").translate(_ONE_KIND, _NOT_BRACKETS)
    if b"[" * (limit + 1) in brackets:
        return True  # a plain bomb: more opening brackets in a row than the limit
    # Each pass removes the innermost pairs, one level of a balanced sequence, at C speed.
    rest = brackets
    for _ in range(limit):
        shorter = rest.replace(b"[]", b"")
        if len(shorter) == len(rest):
            break
        rest = shorter
    if not rest:
        return False
    if b"[]" in rest:
        return True
    # Unbalanced (invalid JSON), yet the decoder recurses until it fails: count exactly.
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit


def tree_exceeds_depth(value: object, limit: int) -> bool:
    """True when the decoded JSON `value` nests lists and dicts more than `limit` deep."""
    # Level by level, without recursion (the value may be as deep as its decoder allowed).
    level = [value] if isinstance(value, (list, dict)) else []  # tuple: faster than a union
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below = []
        for node in level:
            for child in node.values() if isinstance(node, dict) else node:
                if isinstance(child, (list, dict)):
                    below.append(child)
        level = below
    return False
