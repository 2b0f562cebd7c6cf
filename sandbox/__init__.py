"""A development stand-in for the Wrapper (the CRM's admin service): not product code.

``SandboxWrapper`` serves design §5's Wrapper API over real HTTP on loopback from in-memory sample
data, publishes design §2's change events on Redis, and injects faults for tests.
Run one by hand with ``python -m sandbox``.
"""

from sandbox.server import SandboxWrapper

__all__ = ["SandboxWrapper"]
