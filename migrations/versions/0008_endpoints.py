"""outbound webhooks and two-way SMS: webhook_endpoints, webhook_endpoint_notebooks,
webhook_attempts, deliveries.sequence, members.sms_opted_out

Revision ID: 0008_endpoints
Revises: 0006_signin
Create Date: 2026-11-29 11:45:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_endpoints"
down_revision = "0006_signin"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("secret", sa.String(length=100), nullable=False),
        sa.Column("event_types", sa.JSON(), nullable=False),
        sa.Column("payload", sa.String(length=8), nullable=False),
        sa.Column("created_by", sa.String(length=40), nullable=True),
        sa.Column("last_sequence", sa.Integer(), server_default="0", nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("admin_notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "webhook_endpoint_notebooks",
        sa.Column("endpoint_id", sa.String(length=40), nullable=False),
        sa.Column("notebook_id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoints.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["notebook_id"], ["notebooks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("endpoint_id", "notebook_id"),
    )
    op.create_index(
        "ix_webhook_endpoint_notebooks_notebook_id",
        "webhook_endpoint_notebooks",
        ["notebook_id"],
        unique=False,
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("endpoint_id", sa.String(length=40), nullable=False),
        sa.Column("message_id", sa.String(length=40), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoints.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_webhook_attempts_endpoint_time",
        "webhook_attempts",
        ["endpoint_id", "attempted_at", "id"],
        unique=False,
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sequence", sa.Integer(), nullable=True))
        batch_op.create_index("uq_deliveries_endpoint_sequence", ["member_id", "sequence"], unique=True)
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("sms_opted_out", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.drop_column("sms_opted_out")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("uq_deliveries_endpoint_sequence")
        batch_op.drop_column("sequence")
    op.drop_index("ix_webhook_attempts_endpoint_time", table_name="webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_index("ix_webhook_endpoint_notebooks_notebook_id", table_name="webhook_endpoint_notebooks")
    op.drop_table("webhook_endpoint_notebooks")
    op.drop_table("webhook_endpoints")
