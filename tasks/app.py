"""The Celery application, configured from the one Settings object."""

from __future__ import annotations

from celery import Celery

from config.celery import celery_config
from config.settings import get_settings

app = Celery("crmcache")
app.conf.update(celery_config(get_settings()))
