"""Thin DVC stage modules: `python -m stages.<name>` reads params, calls pipeline/, writes outputs."""
