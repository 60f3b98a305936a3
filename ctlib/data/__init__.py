"""Data preparation: named HU windows, body masks, thick-slice simulation, patient-wise splits and
synthetic CT phantoms.

Import the modules qualified (``from ctlib.data import windows`` then ``windows.normalize(...)``);
this package imports nothing heavy on its own.
"""
