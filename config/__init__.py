"""Configuration: one typed settings object read from the environment, and Celery's config."""

from config.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "load_settings"]
