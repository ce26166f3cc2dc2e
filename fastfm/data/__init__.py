"""Fashion-MNIST on disk: IDX files in torchvision's layout ``ROOT/FashionMNIST/raw/``.

* :mod:`fastfm.data.idx`: read, write (atomically) and check IDX files; ``load_split`` for training.
* :mod:`fastfm.data.prepare`: find, download or convert the data and verify it
  (``python scripts/prepare_data.py``).
* :mod:`fastfm.data.resident`: the dataset resident on the device and the loaders that index it.

Nothing is imported here, so ``import fastfm.data`` stays cheap.
"""
