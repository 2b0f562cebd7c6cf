"""The Celery application, configured from the one Settings object.

The task modules are listed in ``include``: the worker imports them when it starts, so that
nothing imports them back from here (each task module imports ``app`` from this one).
"""

from __future__ import annotations

from celery import Celery
from celery.signals import setup_logging, task_postrun, task_prerun

from config.amqp import TruncatingAMQP
from config.celery import celery_config
from config.redis_transport import patch_channel_close
from config.settings import get_settings, settings_or_exit
from crmcache.logging_config import configure_logging
from tasks import log_context
from tasks.pool_watchdog import PoolWatchdog

TASK_MODULES = ("tasks.events", "tasks.preload", "tasks.credits", "tasks.metrics")

patch_channel_close()  # the worker survives its Redis broker dying mid-BRPOP
app = Celery("crmcache", amqp=TruncatingAMQP, include=TASK_MODULES)
app.conf.update(celery_config(settings_or_exit("celery")))  # a bad setting: one line, exit 2
app.steps["worker"].add(PoolWatchdog)


@setup_logging.connect
def _configure_logging(**_: object) -> None:
    """Worker and beat log through crmcache's one dictConfig instead of Celery's own setup."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


task_prerun.connect(log_context.bind_task)
task_postrun.connect(log_context.unbind_task)
