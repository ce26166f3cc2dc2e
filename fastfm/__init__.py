"""fastfm: a high-throughput GPU trainer for Fashion-MNIST.

Importing this package does no work: submodules (``fastfm.data``, ``fastfm.augment``, ...) are
imported by whoever needs them, and optional backends (Kornia, DALI) only when chosen.
"""

__version__ = "0.1.0"
