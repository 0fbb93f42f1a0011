"""`poseloop bench ...`: inference speed, supervised label budgets, HTTP load, the LSP-SSL table."""
