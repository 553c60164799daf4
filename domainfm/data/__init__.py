"""Sample schema, collate, per-item RNG, views, augmentations and the built-in synthetic domain."""
