"""Alembic environment: runs migrations on the connection the bot hands over.

``bot.store.Store.migrate`` passes its open connection in ``config.attributes``,
so migrations need no ``alembic.ini`` and never read credentials from a file.
"""

from alembic import context

from bot.store import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
