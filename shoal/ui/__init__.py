"""The web dashboard: its page (static files shipped with the package) and the local bridge that serves it."""
