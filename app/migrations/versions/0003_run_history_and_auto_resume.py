"""run history (runevent); a lost run's automatic resume: run.auto_resume_streak, run.resume_after

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 13:30:54
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel  # noqa: F401  (autogenerate writes sqlmodel.sql.sqltypes.AutoString)
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # a database made by create_all before migrations existed already has these (app.db.init_db stamps it 0001)
    if sa.inspect(op.get_bind()).has_table("runevent"):
        return
    op.create_table(
        "runevent",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("note", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("runevent", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_runevent_run_id"), ["run_id"], unique=False)

    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("auto_resume_streak", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("resume_after", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_column("resume_after")
        batch_op.drop_column("auto_resume_streak")

    with op.batch_alter_table("runevent", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runevent_run_id"))

    op.drop_table("runevent")
