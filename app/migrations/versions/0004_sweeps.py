"""sweeps (a base spec, a grid or list of settings, times seeds); experiment.sweep_id and experiment.sweep_group

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 17:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel  # noqa: F401  (autogenerate writes sqlmodel.sql.sqltypes.AutoString)
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # a database made by create_all before migrations existed already has these (app.db.init_db stamps it 0001)
    if sa.inspect(op.get_bind()).has_table("sweep"):
        return
    op.create_table(
        "sweep",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("grid", sa.JSON(), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=True),
        sa.Column("seeds", sa.JSON(), nullable=False),
        sa.Column("search", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=True),
        sa.Column("search_seed", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("sweep", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sweep_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_sweep_owner"), ["owner"], unique=False)

    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sweep_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("sweep_group", sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True))
        batch_op.create_index(batch_op.f("ix_experiment_sweep_id"), ["sweep_id"], unique=False)
        batch_op.create_foreign_key("fk_experiment_sweep_id_sweep", "sweep", ["sweep_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.drop_constraint("fk_experiment_sweep_id_sweep", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_experiment_sweep_id"))
        batch_op.drop_column("sweep_group")
        batch_op.drop_column("sweep_id")

    with op.batch_alter_table("sweep", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sweep_owner"))
        batch_op.drop_index(batch_op.f("ix_sweep_created_at"))

    op.drop_table("sweep")
