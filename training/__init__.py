"""Training side of PoseLoop: datasets (`training.datasets`), evaluation metrics (`training.evaluation`),
the training loop and the semi-supervised methods."""
