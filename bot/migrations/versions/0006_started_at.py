"""When a workspace's lifetime began, so that ``extend`` has a fixed cap.

Rows from before have none; ``extend`` then reckons the start from the expiry
as it used to, until the workspace next starts afresh.

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("started_at", sa.DateTime))


def downgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("started_at")
