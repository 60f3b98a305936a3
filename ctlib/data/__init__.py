"""Data preparation shared by the studies: named HU windows, body masks, volume caches, the catalog of
embedded and real volumes, patient-wise splits and synthetic CT phantoms.

Import the modules qualified (``from ctlib.data import windows`` then ``windows.normalize(...)``);
this package imports nothing heavy on its own.
"""
