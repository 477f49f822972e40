"""Alembic environment: uses the engine handed over by shared.db.migrate, or DATABASE_URL."""

from alembic import context

from shared.schema import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        from shared.db import database_for
        from shared.config import get_settings

        engine = database_for(get_settings().database)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run()
