"""Click command groups of the ``voltguard`` CLI."""
