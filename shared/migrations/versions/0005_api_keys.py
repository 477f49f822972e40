"""API keys: table api_keys (salted KDF hashes only) and jobs.owner_key_id, the key that created a job

owner_key_id is a plain indexed column, not a foreign key: key rows are never deleted (a revoked key
keeps its row), and NULL means a job made in keyless loopback mode.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("owner_key_id", sa.String(32), nullable=True))
        batch.create_index("ix_jobs_owner_key_id", ["owner_key_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_owner_key_id")
        batch.drop_column("owner_key_id")
    op.drop_table("api_keys")
