"""storage commitment requests and their N-EVENT-REPORT results

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 22:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "storage_commitment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column("transaction_uid", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("requested_at", _TIMESTAMP, nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("reported_at", _TIMESTAMP, nullable=True),
        sa.Column("reported_by", sa.String(length=128), nullable=True),
        sa.Column("committed", sa.Integer(), nullable=True),
        sa.Column("failed", sa.Integer(), nullable=True),
        sa.Column("failures", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job.id"], name=op.f("fk_storage_commitment_job_id_job")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_storage_commitment")),
        sa.UniqueConstraint("transaction_uid", name=op.f("uq_storage_commitment_transaction_uid")),
    )
    op.create_index("ix_storage_commitment_job_id", "storage_commitment", ["job_id"], unique=False)
    op.create_index("ix_storage_commitment_state", "storage_commitment", ["state"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_storage_commitment_state", table_name="storage_commitment")
    op.drop_index("ix_storage_commitment_job_id", table_name="storage_commitment")
    op.drop_table("storage_commitment")
