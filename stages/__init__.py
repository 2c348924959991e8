"""Thin DVC stage entry points: parse params, call `pipeline`, write artifacts atomically.
DVC runs each as `python -m stages.<name>` (dvc.yaml); `lwf run` (pipeline/flow.py) runs the same
DVC stages as Prefect task runs, through DVC, never by calling a stage's `run` itself."""
