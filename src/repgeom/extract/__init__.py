"""Extraction of last-token representations (`python -m repgeom.extract`); see `job.ExtractionJob`.

Only the light accuracy helpers are imported here, so that report code can use them without torch.
"""
from repgeom.extract.accuracy import accuracy_summary, read_accuracy_metadata

__all__ = ["accuracy_summary", "read_accuracy_metadata"]
