"""CT input/output. Every reader returns a ``Volume`` (see ``ctlib.io.volume`` for the conventions).

- ``dicom_read`` / ``dicom_write``: CT series (sorted by position on the slice normal).
- ``nifti``: NIfTI with an exact geometry round trip.
- ``openkbp``: OpenKBP patients (repacked ``.npz`` or the challenge's CSV folders).
- ``read_volume``: any of the above from one path.
"""

from ctlib.errors import CTInputError
from ctlib.io.reader import detect_format, read_volume
from ctlib.io.volume import Volume

__all__ = ["CTInputError", "Volume", "detect_format", "read_volume"]
