"""Helpers that the task YAMLs of this folder name with `!function utils.<name>`."""


def dental_only(dataset):
    """MedMCQA rows whose subject is Dental (as pipeline/tasks/choice.py Dental keeps them)."""
    return dataset.filter(lambda r: r["subject_name"] == "Dental")
