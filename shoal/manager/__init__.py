"""The manager: control API, store, leader-only control loops, dispatcher and CA."""
