"""Operator tooling: the ``crmcache`` command line, inspection, dead letters, health checks,
and (in ``ops.dev``) the development stack. It stands on everything below it and nothing
imports it."""
