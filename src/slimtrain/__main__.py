"""``python -m slimtrain``: the ``slimtrain`` command (torchrun launches its workers this way)."""

from .cli import app

if __name__ == "__main__":
    app()
