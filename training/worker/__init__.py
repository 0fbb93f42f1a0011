"""Training workers: the Celery tasks (Redis mode) and the embedded polling worker, one job runner for both."""
