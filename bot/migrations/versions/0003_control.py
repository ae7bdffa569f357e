"""Comment commands, role grants, the audit log and lifecycle timers.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("author_id", sa.Integer))
        batch.add_column(sa.Column("stop_at", sa.DateTime))
        batch.add_column(sa.Column("expires_at", sa.DateTime))
        batch.add_column(
            sa.Column("restart", sa.Boolean, nullable=False, server_default="0")
        )
    with op.batch_alter_table("members") as batch:
        batch.add_column(sa.Column("last_seen_at", sa.DateTime))
        batch.add_column(
            sa.Column("connected", sa.Integer, nullable=False, server_default="0")
        )
    op.create_table(
        "command_notes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "workspace_id",
            sa.Integer,
            sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("note_id", sa.BigInteger, nullable=False, unique=True),
        sa.Column("discussion_id", sa.String(64)),
        sa.Column("author_id", sa.Integer, nullable=False),
        sa.Column("author_username", sa.String(255), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("head_sha", sa.String(64), nullable=False),
        sa.Column("done", sa.Integer, nullable=False),
        sa.Column("replies", sa.Text, nullable=False),
        sa.Column("posted", sa.Integer, nullable=False),
        sa.Column("acked", sa.Boolean, nullable=False),
        sa.Column("finished", sa.Boolean, nullable=False, index=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "grants",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "workspace_id",
            sa.Integer,
            sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("gitlab_user_id", sa.Integer, nullable=False),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("granted_by", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("workspace_id", "gitlab_user_id"),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime, nullable=False, index=True),
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("mr_iid", sa.Integer, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
    )
    op.create_index("ix_audit_mr", "audit", ["project_id", "mr_iid"])


def downgrade() -> None:
    op.drop_table("audit")
    op.drop_table("grants")
    op.drop_table("command_notes")
    with op.batch_alter_table("members") as batch:
        batch.drop_column("connected")
        batch.drop_column("last_seen_at")
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("restart")
        batch.drop_column("expires_at")
        batch.drop_column("stop_at")
        batch.drop_column("author_id")
