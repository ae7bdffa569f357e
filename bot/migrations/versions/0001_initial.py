"""Deliveries and workspaces.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(200), nullable=False, unique=True),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime, nullable=False, index=True),
        sa.Column("project_id", sa.Integer),
        sa.Column("mr_iid", sa.Integer),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("body", sa.Text),
    )
    op.create_table(
        "workspaces",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("mr_iid", sa.Integer, nullable=False),
        sa.Column("project_path", sa.String(512), nullable=False),
        sa.Column("project_http_url", sa.String(1024), nullable=False),
        sa.Column("mr_url", sa.String(1024), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("mr_state", sa.String(16), nullable=False),
        sa.Column("is_fork", sa.Boolean, nullable=False),
        sa.Column("draft", sa.Boolean, nullable=False),
        sa.Column("source_branch", sa.String(512), nullable=False),
        sa.Column("head_sha", sa.String(64), nullable=False),
        sa.Column("running_sha", sa.String(64)),
        sa.Column("approved_sha", sa.String(64)),
        sa.Column("desired", sa.String(16), nullable=False),
        sa.Column("phase", sa.String(24), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("note_id", sa.Integer),
        sa.Column("note_digest", sa.String(64)),
        sa.Column("mr_updated_at", sa.DateTime),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("due_at", sa.DateTime, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("claimed_by", sa.String(128)),
        sa.Column("claimed_until", sa.DateTime),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("project_id", "mr_iid"),
    )


def downgrade() -> None:
    op.drop_table("workspaces")
    op.drop_table("deliveries")
