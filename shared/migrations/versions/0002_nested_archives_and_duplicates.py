"""nested archives (depth, byte budget) and duplicate files (same sha256 in a job)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("archives") as batch:
        batch.add_column(sa.Column("depth", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("budget_bytes", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("duplicate_of", sa.String(length=32), nullable=True))
        batch.create_foreign_key("fk_files_duplicate_of", "files", ["duplicate_of"], ["id"], ondelete="SET NULL")
        batch.create_index("ix_files_sha256", ["sha256"])


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_index("ix_files_sha256")
        batch.drop_constraint("fk_files_duplicate_of", type_="foreignkey")
        batch.drop_column("duplicate_of")
    with op.batch_alter_table("archives") as batch:
        batch.drop_column("budget_bytes")
        batch.drop_column("depth")
