"""hl7v2 sources: sources.config, a source's kind settings (the patients map, a timezone), as
0010_fhir adds it (one of the two goes when both are merged)

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
        batch_op.add_column(sa.Column("config", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.drop_column("config")
