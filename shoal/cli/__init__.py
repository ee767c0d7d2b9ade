"""The `shoal` command-line client: a client of shoal's Docker-compatible Engine API."""
