"""One logging configuration: text or JSON lines, with the tenant and event ids of the event a
line is about."""

from __future__ import annotations

import io
import json
import logging
import logging.config

from crmcache.logging_config import ContextFilter, log_context, logging_dict
from tasks.log_context import event_ids, task_log_fields


def _emit(fmt: str, with_context: bool) -> str:
    """One line through the formatter and filter of logging_dict(fmt), into a string."""
    config = logging_dict("INFO", fmt)
    assert config["handlers"]["stderr"]["filters"] == ["context"]
    formatter = logging.config.DictConfigurator(config).configure_formatter(
        config["formatters"]["default"]
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    logger = logging.getLogger(f"crmcache.test.{fmt}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        if with_context:
            with log_context(tenant="acme", event_ids="e-1,#7"):
                logger.info("applied %d events", 2)
        else:
            logger.info("nothing about an event")
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().strip()


def test_text_lines_about_an_event_name_its_tenant_and_ids() -> None:
    line = _emit("text", with_context=True)
    assert line.endswith("applied 2 events [tenant=acme event_ids=e-1,#7]")
    assert _emit("text", with_context=False).endswith("nothing about an event")


def test_json_lines_carry_tenant_and_event_ids_as_fields() -> None:
    record = json.loads(_emit("json", with_context=True))
    assert record["message"] == "applied 2 events"
    assert record["tenant"] == "acme" and record["event_ids"] == "e-1,#7"
    assert "tenant" not in json.loads(_emit("json", with_context=False))


def test_a_task_binds_its_tenant_and_event_ids() -> None:
    def apply_events(tenant: str, events: list[object]) -> None: ...

    fields = task_log_fields(
        "crmcache.apply_events",
        apply_events,
        ("acme", [{"s": 3, "id": "evt-1"}, {"s": 4}]),
        {},
    )
    assert fields == {"tenant": "acme", "event_ids": "evt-1,#4"}


def test_a_task_without_a_tenant_argument_binds_none() -> None:
    def preload_all(reason: str = "schedule", guard: bool = True) -> None: ...

    assert task_log_fields("crmcache.preload_all", preload_all, ("schedule",), {}) == {}


def test_long_batches_list_the_first_ids_and_a_count() -> None:
    text = event_ids([{"s": n} for n in range(25)])
    assert text.startswith("#0,#1,") and text.endswith(",+5 more")
