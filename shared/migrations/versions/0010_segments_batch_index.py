"""segments by batch: ix_segments_batch, so that a GPU worker's claim and a batch's position read its segments
through an index, not a scan of every segment the database holds

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_segments_batch", "segments", ["batch_id"])


def downgrade() -> None:
    op.drop_index("ix_segments_batch", table_name="segments")
