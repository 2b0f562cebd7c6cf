"""Celery's message factory, with short task-argument previews.

Celery puts ``argsrepr``/``kwargsrepr`` (a ``saferepr`` of the arguments, cut at
``AMQP.argsrepr_maxsize``, 1024 characters by default) into every task message and its
``task-sent``/``task-received`` events: that preview is what Flower and the worker's log show.
An ``apply_events`` batch holds user ids, statuses and roles, so the preview is cut short enough
that the tenant and the first event's type show but its data does not. The arguments themselves
are untouched.
"""

from __future__ import annotations

from celery.app.amqp import AMQP

TASK_ARGS_PREVIEW = 64
"""Characters of a task's args (and of its kwargs) shown in Flower and in the worker's log."""


class TruncatingAMQP(AMQP):
    """``Celery(..., amqp=TruncatingAMQP)``: task argument previews cut at TASK_ARGS_PREVIEW."""

    argsrepr_maxsize = TASK_ARGS_PREVIEW
    kwargsrepr_maxsize = TASK_ARGS_PREVIEW
