"""job leases, provenance and QC; provenance on state changes; delivery attempts

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 19:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = sa.DateTime(timezone=True)
_JOB_COLUMNS = (
    ("lease_owner", sa.String(length=128)),
    ("lease_expires_at", _TIMESTAMP),
    ("first_send_failure_at", _TIMESTAMP),
    ("next_send_at", _TIMESTAMP),
    ("model_name", sa.String(length=64)),
    ("model_version", sa.String(length=64)),
    ("model_sha256", sa.String(length=64)),
    ("worker_host", sa.String(length=255)),
    ("device", sa.String(length=32)),
    ("output_dir", sa.Text()),
    ("qc_passed", sa.Boolean()),
    ("qc_reason", sa.Text()),
)
_CHANGE_COLUMNS = (
    ("worker_host", sa.String(length=255)),
    ("device", sa.String(length=32)),
    ("model_name", sa.String(length=64)),
    ("model_version", sa.String(length=64)),
    ("model_sha256", sa.String(length=64)),
)


def upgrade() -> None:
    # Plain ADD COLUMN (no table rebuild): job_state_change keeps its append-only triggers.
    for name, type_ in _JOB_COLUMNS:
        op.add_column("job", sa.Column(name, type_, nullable=True))
    op.add_column(
        "job", sa.Column("send_attempts", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column(
        "job",
        sa.Column("force_send", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_job_lease_expires_at", "job", ["lease_expires_at"], unique=False)
    for name, type_ in _CHANGE_COLUMNS:
        op.add_column("job_state_change", sa.Column(name, type_, nullable=True))
    op.create_table(
        "delivery_attempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column("started_at", _TIMESTAMP, nullable=False),
        sa.Column("ended_at", _TIMESTAMP, nullable=False),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.Column("instances_sent", sa.Integer(), nullable=False),
        sa.Column("instances_failed", sa.Integer(), nullable=False),
        sa.Column("statuses", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job.id"], name=op.f("fk_delivery_attempt_job_id_job")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_attempt")),
    )
    op.create_index("ix_delivery_attempt_job_id", "delivery_attempt", ["job_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_delivery_attempt_job_id", table_name="delivery_attempt")
    op.drop_table("delivery_attempt")
    for name, _ in _CHANGE_COLUMNS:
        op.drop_column("job_state_change", name)
    op.drop_index("ix_job_lease_expires_at", table_name="job")
    for name in ("force_send", "send_attempts", *(n for n, _ in _JOB_COLUMNS)):
        op.drop_column("job", name)
