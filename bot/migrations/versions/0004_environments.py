"""The GitLab environment behind the MR widget's "View app" link, and notes
about a running workspace (what of its devfile was not applied).

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("environment_id", sa.Integer))
        batch.add_column(sa.Column("deployed_sha", sa.String(64)))
        batch.add_column(
            sa.Column("notices", sa.Text, nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("notices")
        batch.drop_column("deployed_sha")
        batch.drop_column("environment_id")
