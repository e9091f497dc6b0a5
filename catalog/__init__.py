"""catalog: nnU-Net v1's crop + DatasetAnalyzer facts, stored as rows in SQLite or PostgreSQL."""
__version__ = "0.1.0"
