"""Task-level entry points built on the models: what a user calls with text in and results out.

`pipeline(task, model=None, ...)` (fastx.pipelines.factory) is transformers' front door; one
module per task family holds its pipeline class.
"""

from fastx.pipelines.factory import pipeline

__all__ = ["pipeline"]
