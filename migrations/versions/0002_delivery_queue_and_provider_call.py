"""deliveries: the queue a delivery's jobs go to, the job carrying its next attempt, and when
its provider was last called

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queue", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("job_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("provider_called_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_deliveries_queue_due", ["queue", "status", "next_attempt_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_queue_due")
        batch_op.drop_column("provider_called_at")
        batch_op.drop_column("job_id")
        batch_op.drop_column("queue")
