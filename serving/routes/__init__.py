"""HTTP routers: thin — they validate input and delegate to the Service (serving.app)."""
