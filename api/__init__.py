"""The HTTP API, authentication, problem details, Redis and the CLI."""
