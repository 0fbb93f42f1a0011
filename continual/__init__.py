"""The continual loop's shared state and orchestration, used by the API and by the workers alike: settings,
the job table, the upload store, queue and task names, the scheduler, and the retrain job (plan, train, gate).

Only `continual.retrain`, `continual.runner` and `continual.ddp_chunk` import the training library (torch);
the state modules the API imports never do."""
