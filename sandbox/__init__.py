"""A development stand-in for the Wrapper (the CRM's admin service): not product code.

``SandboxWrapper`` serves the Wrapper API (docs/wrapper-api.md) over real HTTP on loopback from
in-memory sample data, publishes the change events of README.md's "The event contract" on Redis,
and injects faults for tests.
Run one by hand with ``python -m sandbox``.
"""

from sandbox.server import SandboxWrapper

__all__ = ["SandboxWrapper"]
