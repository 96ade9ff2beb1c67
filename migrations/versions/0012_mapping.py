"""mapping sources and re-runs: sources.mapping, inbound_records.reruns and reran_at

Revision ID: 0012_mapping
Revises: 0009_preferences
Create Date: 2026-11-29 15:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_mapping"
down_revision = "0010_fhir"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mapping", sa.JSON(), nullable=True))
    with op.batch_alter_table("inbound_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reruns", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("reran_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inbound_records", schema=None) as batch_op:
        batch_op.drop_column("reran_at")
        batch_op.drop_column("reruns")
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.drop_column("mapping")
