"""Fault injection for the gpu_check smoke test: the Kornia backend fails at its first batch."""
import os

if os.environ.get("FASTFM_INJECT_FAULT") == "kornia":
    import fastfm.augment as _aug

    _create = _aug.create_augmenter

    def create_augmenter(cfg, *args, **kwargs):
        aug = _create(cfg, *args, **kwargs)
        if cfg.backend == "kornia":
            def broken(images):
                raise RuntimeError("injected fault: the kornia backend failed on its first batch")
            aug._augment = broken
        return aug

    _aug.create_augmenter = create_augmenter
