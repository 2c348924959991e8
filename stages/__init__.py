"""Thin DVC stage entry points: parse params, call `pipeline`, write artifacts atomically.
Each module's `run` is also a Prefect task in `pipeline/flow.py` (`lwf run`)."""
