"""acknowledgement, escalation and urgent failover: the escalations table; deliveries'
escalation_step (in their unique key), reason, failover_of, failover_due_at and who
acknowledged them

Revision ID: 0016_escalation
Revises: 0013_caldav_feed
Create Date: 2026-11-29 15:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0016_escalation"
down_revision = "0013_caldav_feed"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "escalations",
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("notebook_id", sa.String(length=40), nullable=False),
        sa.Column("rule", sa.String(length=200), nullable=True),
        sa.Column("acknowledge_within", sa.Integer(), nullable=False),
        sa.Column("acknowledge_by", sa.DateTime(timezone=True), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("fired", sa.JSON(), nullable=False),
        sa.Column("next_step", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=40), nullable=True),
        sa.Column("acknowledged_via", sa.String(length=16), nullable=True),
        sa.Column("acknowledged_delivery_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["notebook_id"], ["notebooks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("ix_escalations_due", "escalations", ["due_at"], unique=False)
    op.create_index("ix_escalations_notebook_id", "escalations", ["notebook_id"], unique=False)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("escalation_step", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("failover_of", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("failover_due_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("acknowledged_by", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("acknowledged_via", sa.String(length=16), nullable=True))
        batch_op.drop_constraint("uq_deliveries_event_member_channel", type_="unique")
        batch_op.create_unique_constraint(
            "uq_deliveries_event_member_channel_step", ["event_id", "member_id", "channel", "escalation_step"]
        )
        batch_op.create_index("ix_deliveries_failover_due", ["failover_due_at"], unique=False)


def downgrade() -> None:
    # Escalation alerts and failovers repeat (event, member, channel): they go with the column.
    op.execute("DELETE FROM deliveries WHERE escalation_step > 0 OR failover_of IS NOT NULL")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_failover_due")
        batch_op.drop_constraint("uq_deliveries_event_member_channel_step", type_="unique")
        batch_op.create_unique_constraint(
            "uq_deliveries_event_member_channel", ["event_id", "member_id", "channel"]
        )
        batch_op.drop_column("acknowledged_via")
        batch_op.drop_column("acknowledged_by")
        batch_op.drop_column("acknowledged_at")
        batch_op.drop_column("failover_due_at")
        batch_op.drop_column("failover_of")
        batch_op.drop_column("reason")
        batch_op.drop_column("escalation_step")
    op.drop_index("ix_escalations_notebook_id", table_name="escalations")
    op.drop_index("ix_escalations_due", table_name="escalations")
    op.drop_table("escalations")
