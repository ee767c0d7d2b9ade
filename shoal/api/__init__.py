"""The Docker-compatible HTTP API: the server routes and the client the CLI uses."""
