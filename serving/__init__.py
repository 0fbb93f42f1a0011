"""HTTP API and inference backends; never imports torch."""
