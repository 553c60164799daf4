"""Shared test settings."""

#: CLI flags that make any pretraining run tiny (one block, 32-wide, 32 px images, no bars or TensorBoard)
TINY_MODEL_FLAGS = [
    "--set", "model.depth=1", "--set", "model.embed_dim=32", "--set", "model.num_heads=2",
    "--set", "model.patch_size=8", "--set", "data.img_size=32", "--set", "train.progress=false",
]  # fmt: skip


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it), so two test runs on one machine never collide."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
