"""Mininet node types, the daemons they run, and the helpers that start and stop them."""
