"""Training machinery: self-describing checkpoints, the resumable training loop, data streams, DDP hooks.

Import the modules qualified (``from ctlib.train import loop`` then ``loop.train(...)``).
"""
