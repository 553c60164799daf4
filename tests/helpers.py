"""Shared test settings."""

#: CLI flags that make any pretraining run tiny (one block, 32-wide, 32 px images, no bars or TensorBoard)
TINY_MODEL_FLAGS = [
    "--set", "model.depth=1", "--set", "model.embed_dim=32", "--set", "model.num_heads=2",
    "--set", "model.patch_size=8", "--set", "data.img_size=32", "--set", "train.progress=false",
]  # fmt: skip
