"""What every PoseLoop process shares and that knows nothing of models, training or HTTP: durable file writes,
SQLite set-up, logging, the name registry, and validation of untrusted input (image bytes, boxes, JSON)."""
