"""Where task data lives when no ``--data-dir`` is given."""

DATA_DIR_ENV = "RAYSEQ_DATA_DIR"
"""Environment variable naming a folder with one subfolder per task (``$RAYSEQ_DATA_DIR/<task>``)."""
