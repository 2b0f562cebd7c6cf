"""The Celery application (``tasks/celery.py``), every task, and the producer that sends them.

``celery -A tasks worker|beat|flower`` finds the app in ``tasks/celery.py`` (Celery's own
convention for a package). Importing this package loads nothing: the subscriber, the readers
and the HTTP API import ``tasks.producer`` alone, never the task code.
"""
