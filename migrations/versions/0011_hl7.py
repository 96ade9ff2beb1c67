"""hl7v2 sources: sources.patients (patient identifier → notebook) and sources.timezone

Revision ID: 0011_hl7
Revises: 0009_preferences
Create Date: 2026-11-29 14:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_hl7"
down_revision = "0009_preferences"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patients", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("timezone", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.drop_column("timezone")
        batch_op.drop_column("patients")
