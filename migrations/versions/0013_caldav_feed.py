"""CalDAV publishing and calendar feeds: the caldav_calendars table, members'
calendar_feed_generation and calendar_feed_hash

Revision ID: 0013_caldav_feed
Revises: 0014_reminders
Create Date: 2026-11-29 15:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_caldav_feed"
down_revision = "0014_reminders"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "caldav_calendars",
        sa.Column("notebook_id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("username", sa.String(length=200), nullable=True),
        sa.Column("password", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["notebook_id"], ["notebooks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("notebook_id"),
    )
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("calendar_feed_generation", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("calendar_feed_hash", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint("uq_members_calendar_feed_hash", ["calendar_feed_hash"])


def downgrade() -> None:
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.drop_constraint("uq_members_calendar_feed_hash", type_="unique")
        batch_op.drop_column("calendar_feed_hash")
        batch_op.drop_column("calendar_feed_generation")
    op.drop_table("caldav_calendars")
