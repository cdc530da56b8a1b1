"""Workflow releases: a saga is pinned to the release of its workflow it started on.

``sagas.release`` names that release (sagas started before releases existed are on ``"1"``, the
release of a workflow that declares none); ``workflow_releases`` keeps the fingerprint of each
release's structure the first time a process ran it, so a changed definition under an unchanged
release is caught before it decides a saga. The partial index answers "how many sagas in flight
per release and state" without reading finished sagas.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sagas", sa.Column("release", sa.Text, nullable=False, server_default="1"))
    op.create_index(
        "sagas_in_flight",
        "sagas",
        ["workflow", "release", "state"],
        postgresql_where=sa.text("status IN ('running', 'compensating')"),
    )
    op.create_table(
        "workflow_releases",
        sa.Column("workflow", sa.Text, nullable=False),
        sa.Column("release", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("first_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workflow", "release", name="workflow_releases_pk"),
    )


def downgrade() -> None:
    op.drop_table("workflow_releases")
    op.drop_index("sagas_in_flight", table_name="sagas")
    op.drop_column("sagas", "release")
