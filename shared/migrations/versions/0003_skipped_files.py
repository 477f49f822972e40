"""skipped files: jobs.files_skipped counts archive sidecars (notes.txt, calls.csv, ...) that are not audio

The new file state 'skipped' needs no DDL: states are VARCHAR(16) without a CHECK constraint
(native_enum=False in 0001) on SQLite and PostgreSQL alike.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("files_skipped", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.execute("UPDATE files SET state = 'failed' WHERE state = 'skipped'")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("files_skipped")
