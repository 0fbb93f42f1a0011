"""Worker processes (composition roots): the Celery tasks (Redis mode), the embedded polling worker and the
ingest checks. They wire the loop's state (continual/) to training and to torch-free inference (serving/)."""
