"""sources and their inbound records: signed webhooks in

Revision ID: 0005_sources_inbound
Revises: 0004_keys_roles_audit
Create Date: 2026-11-29 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_sources_inbound"
down_revision = "0004_keys_roles_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("notebook_id", sa.String(length=40), nullable=True),
        sa.Column("secret", sa.String(length=100), nullable=False),
        sa.Column("previous_secret", sa.String(length=100), nullable=True),
        sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("secret_rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["notebook_id"], ["notebooks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sources_notebook_id"), ["notebook_id"], unique=False)

    op.create_table(
        "inbound_records",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("source_id", sa.String(length=40), nullable=False),
        sa.Column("webhook_id", sa.String(length=200), nullable=True),
        sa.Column("first_key", sa.String(length=200), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("event_ids", sa.JSON(), nullable=False),
        sa.Column("duplicate_of", sa.String(length=40), nullable=True),
        sa.Column("content_type", sa.String(length=200), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(["source_id"], ["sources.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source_id", "first_key", name="uq_inbound_records_first"),
    )
    with op.batch_alter_table("inbound_records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_inbound_records_source_received", ["source_id", "received_at", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("inbound_records", schema=None) as batch_op:
        batch_op.drop_index("ix_inbound_records_source_received")
    op.drop_table("inbound_records")
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sources_notebook_id"))
    op.drop_table("sources")
