"""The example Celery application (see worker.py)."""
