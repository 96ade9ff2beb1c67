"""RSVPs read back: checkin_answers (each member's PARTSTAT per check-in, or per occurrence)

Revision ID: 0015_rsvp
Revises: 0013_caldav_feed
Create Date: 2026-11-29 14:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0015_rsvp"
down_revision = "0013_caldav_feed"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checkin_answers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("checkin_pk", sa.Integer(), nullable=False),
        sa.Column("notebook_id", sa.String(length=40), nullable=False),
        sa.Column("member_id", sa.String(length=40), nullable=False),
        sa.Column("recurrence_id", sa.String(length=40), nullable=False),
        sa.Column("partstat", sa.String(length=16), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("dtstamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["checkin_pk"], ["checkins.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["member_id"], ["members.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["notebook_id"], ["notebooks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("checkin_pk", "member_id", "recurrence_id", name="uq_checkin_answers_member"),
    )
    op.create_index("ix_checkin_answers_checkin_pk", "checkin_answers", ["checkin_pk"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_checkin_answers_checkin_pk", table_name="checkin_answers")
    op.drop_table("checkin_answers")
