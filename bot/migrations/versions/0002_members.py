"""Members: who joined which workspace, as which Linux user and role.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "members",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "workspace_id",
            sa.Integer,
            sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("gitlab_user_id", sa.Integer, nullable=False),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("linux_name", sa.String(32), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("locked", sa.Boolean, nullable=False),
        sa.Column("first_joined_at", sa.DateTime, nullable=False),
        sa.Column("last_joined_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("workspace_id", "gitlab_user_id"),
    )


def downgrade() -> None:
    op.drop_table("members")
