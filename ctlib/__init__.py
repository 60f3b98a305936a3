"""ctlib: the library behind the CT deep-learning notebooks (I/O, data, runs, models, metrics, viewers)."""

__version__ = "0.1.0"
