"""keys with roles and the audit log: api_keys.role (existing keys become family),
api_keys.last_used_at, api_keys.notebook_id nullable (clinic keys), api_key_notebooks,
audit_log (append-only: a trigger refuses UPDATE and DELETE on both databases)

Revision ID: 0004_keys_roles_audit
Revises: 0003
Create Date: 2026-11-29 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_keys_roles_audit"
down_revision = "0003"
branch_labels = None
depends_on = None

APPEND_ONLY_MESSAGE = "audit_log is append-only"

PG_FUNCTION = f"""
CREATE FUNCTION careloop_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}';
END
$$
"""


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("role", sa.String(length=16), server_default="family", nullable=False))
        batch_op.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.alter_column("notebook_id", existing_type=sa.String(length=40), nullable=True)

    op.create_table(
        "api_key_notebooks",
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("notebook_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["notebook_id"], ["notebooks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key_id", "notebook_id"),
    )
    with op.batch_alter_table("api_key_notebooks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_key_notebooks_notebook_id"), ["notebook_id"], unique=False)

    op.create_table(
        "audit_log",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("notebook_id", sa.String(length=40), nullable=True),
        sa.Column("actor_type", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.String(length=40), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_id", sa.String(length=40), nullable=True),
        sa.Column("remote_addr", sa.String(length=64), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_log_notebook_at", ["notebook_id", "at", "id"], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION careloop_audit_log_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS careloop_audit_log_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_notebook_at")
    op.drop_table("audit_log")
    with op.batch_alter_table("api_key_notebooks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_key_notebooks_notebook_id"))
    op.drop_table("api_key_notebooks")
    # Clinic keys have no notebook of their own: they go with the table that held their reach.
    op.execute("DELETE FROM api_keys WHERE notebook_id IS NULL")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.alter_column("notebook_id", existing_type=sa.String(length=40), nullable=False)
        batch_op.drop_column("last_used_at")
        batch_op.drop_column("role")
