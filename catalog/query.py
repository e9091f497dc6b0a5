"""`catalog query`: read-only SQL over the catalog (tables and the documented views)."""
from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from .db import make_engine
from .errors import CatalogError

WRITE_HINTS = ("readonly", "read-only", "read only", "query_only")


def run_query(sql: str, url: str | None = None) -> tuple[list[str], list[tuple]]:
    """Run one SQL statement in a read-only transaction; returns (column names, rows).

    SQLite opens the connection with PRAGMA query_only; PostgreSQL makes every transaction of
    the session read-only. A statement that writes is refused by the database itself.
    """
    engine = make_engine(url, read_only=True)
    try:
        with engine.connect() as conn:
            result = conn.execute(text(sql))
            if not result.returns_rows:
                return [], []
            return list(result.keys()), [tuple(r) for r in result.fetchall()]
    except DBAPIError as exc:
        message = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        if any(h in message.lower() for h in WRITE_HINTS):
            raise CatalogError(f"refused: catalog query is read-only ({message})") from None
        raise CatalogError(f"SQL error: {message}") from None
    except SQLAlchemyError as exc:
        raise CatalogError(f"SQL error: {str(exc).splitlines()[0]}") from None
    finally:
        engine.dispose()
