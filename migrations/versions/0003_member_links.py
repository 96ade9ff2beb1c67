"""member links and email detail: members.link_generation, notebooks.email_detail,
deliveries.link_issued_at, instance_secrets

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instance_secrets",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.add_column(sa.Column("link_generation", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("notebooks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("email_detail", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("link_issued_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("link_issued_at")
    with op.batch_alter_table("notebooks", schema=None) as batch_op:
        batch_op.drop_column("email_detail")
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.drop_column("link_generation")
    op.drop_table("instance_secrets")
