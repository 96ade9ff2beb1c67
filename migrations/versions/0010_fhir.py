"""FHIR sources: sources.config (a source's kind settings, e.g. a FHIR source's patient map)
and inbound_records.details (what a record keeps about its body, e.g. a FHIR subscription
notification's type and event numbers)

Revision ID: 0010_fhir
Revises: 0009_preferences
Create Date: 2026-11-29 15:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_fhir"
down_revision = "0009_preferences"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.add_column(sa.Column("config", sa.JSON(), nullable=True))
    with op.batch_alter_table("inbound_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("details", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inbound_records", schema=None) as batch_op:
        batch_op.drop_column("details")
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.drop_column("config")
