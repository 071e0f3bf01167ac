"""Runnable examples of applications on a huddle fleet (see examples/README.md)."""
