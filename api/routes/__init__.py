"""HTTP route handlers, one module per audience."""
