"""ctlib: the library behind the CT deep-learning notebooks.

Shared layers (``io``, ``data``, ``models``, ``diffusion``, ``metrics``, ``train``, ``viz``, ``runs``) and
base pieces (``paths``, ``atomic``, ``config``, ``errors``, ``device``, ``provenance``, ``checkpoint``)
sit under the studies (``ctlib.studies.<study>``); the import contracts in ``pyproject.toml`` keep it
so (see README, Layout).
"""

__version__ = "0.1.0"
