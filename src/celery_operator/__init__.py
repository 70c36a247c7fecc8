"""celery-operator: a Kubernetes operator for Celery."""

__version__ = "0.1.0"
