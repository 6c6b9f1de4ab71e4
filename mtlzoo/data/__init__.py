"""Data: generated tasks and the batching the trainer reads. ``datasets`` loads lazily."""

from mtlzoo.data.synthetic import synthetic_tasks

__all__ = ["synthetic_tasks"]
