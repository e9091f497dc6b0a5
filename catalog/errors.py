"""Exceptions raised by the catalog library. The CLI turns every CatalogError into `Error: ...`."""
from __future__ import annotations


class CatalogError(Exception):
    """Base class: a problem the user can act on. The message says what and where."""


class ImageReadError(CatalogError):
    """An image or label file could not be read, or its content is unusable.

    `check` is the short name of the data check that failed (e.g. "truncated_file"), so the
    ingest can store the problem as a finding row; `path` is the file.
    """

    def __init__(self, path: str, message: str, check: str = "unreadable_file"):
        self.path = str(path)
        self.check = check
        self.reason = message
        super().__init__(f"{self.path}: {message}")


class DatasetLayoutError(CatalogError):
    """dataset.json or the task folder is unusable as a whole; `check` names the data check."""

    def __init__(self, message: str, check: str = "dataset_json_malformed", path: str | None = None):
        self.check = check
        self.path = path
        super().__init__(message)


class TaskNotFoundError(CatalogError):
    """A task name, number or folder could not be resolved."""


class SchemaOutOfDateError(CatalogError):
    """The database schema is newer than this catalog knows."""


class ExportRefusedError(CatalogError):
    """An export cannot be written faithfully (e.g. cases with errors)."""
