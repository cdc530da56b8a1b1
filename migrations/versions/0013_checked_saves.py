"""A batch's save checks what it read, in the statement that writes it (issue 30).

A batch reads its sagas without a transaction and writes everything in one statement, its own
transaction: that statement locks the sagas it writes (skipping any another transaction holds),
checks their versions against those read and its partitions' fences, and fails as a whole when
one does not hold. ``orchestrator_abort`` is how a statement fails with a SQLSTATE and a detail
of its choosing: 55P03 (lock_not_available) with the ids of the sagas held elsewhere, which the
batch sets aside; 40001 (serialization_failure) when a saga moved or a fence was handed over
since the read, after which the batch is read again.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION orchestrator_abort(code text, message text, detail text)
        RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message, DETAIL = coalesce(detail, '');
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS orchestrator_abort(text, text, text)")
