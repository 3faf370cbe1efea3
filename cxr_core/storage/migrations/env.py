"""Alembic environment for CXR Review, configured from code (no alembic.ini).

``cxr_core.storage.init_db(engine)`` passes an open connection in
``config.attributes["connection"]``; the ``alembic`` command line can be used too, with
``-x url=...`` or ``CXR_DATABASE_URL`` (``python -m alembic -c <ini with script_location =
cxr_core/storage/migrations>``), e.g. for ``revision --autogenerate``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from cxr_core.storage.schema import Base

config = context.config


def _configure_and_run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTERs by table copy
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _configure_and_run(connection)
else:
    from cxr_core.config import get_settings

    url = context.get_x_argument(as_dictionary=True).get("url") or get_settings().database_url
    with create_engine(url).begin() as conn:
        _configure_and_run(conn)
