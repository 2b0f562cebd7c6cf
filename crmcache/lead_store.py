"""Leads in a SQL database (SQLAlchemy 2 Core): PostgreSQL in production, SQLite for ``make up``.

The schema is one table, created by ``LeadStore.create_schema`` (SQLAlchemy's
``metadata.create_all``: it creates only what is missing, so every process runs it, on its
first use of the database rather than at start, so that an API whose database is down still
answers everything but leads; there is nothing to migrate yet). Every query names the tenant:
a lead id of another tenant is never found.

A row is either a lead (``status`` active) or a *tombstone* (``status`` void) that the
reconciler writes for a lead id whose hold it voids: the primary key then refuses a late
insert of that lead, so a lead can never appear after its hold was given back. The database's
uniqueness is the arbiter between an API process that is slow to write and the reconciler.
``charged`` is set once the lead's hold was committed (the reconciler finds the rest).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from crmcache.camel import camel_fields
from crmcache.errors import LeadStoreUnavailable

logger = logging.getLogger(__name__)

ACTIVE, VOID = "active", "void"

metadata = sa.MetaData()
leads = sa.Table(
    "crm_leads",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("lead_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("user_id", sa.String(256), nullable=False),
    sa.Column("hold_id", sa.String(64), nullable=False),
    sa.Column("credits", sa.String(40), nullable=False, doc="decimal text, as charged"),
    sa.Column("lead_data", sa.JSON, nullable=True),
    sa.Column("created_at", sa.String(32), nullable=False, doc="ISO-8601 UTC"),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("charged", sa.Boolean, nullable=False, default=False),
    sa.Index("crm_leads_uncharged", "tenant", "charged", "created_ms"),
)


@dataclass(frozen=True)
class Lead:
    tenant: str
    lead_id: str
    user_id: str
    hold_id: str
    credits: str
    lead_data: dict[str, Any]
    created_at: str
    charged: bool = False

    def as_json(self) -> dict[str, Any]:
        shown = camel_fields(self, "lead_id", "user_id", "lead_data", "created_at")
        return {**shown, "creditsDeducted": self.credits}


def make_engine(url: str) -> Engine:
    """An engine that survives a database restart (pre-ping) and, for SQLite, concurrent API
    threads (WAL, a busy timeout, the file's directory made)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


class LeadStore:
    """One process's access to the leads table."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def create_schema(self) -> None:
        with self._schema_lock, self.engine.begin() as conn:
            metadata.create_all(conn)
            self._schema_ready = True

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A transaction; database outages become LeadStoreUnavailable (integrity errors pass)."""
        try:
            if not self._schema_ready:
                self.create_schema()
            with self.engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except (DBAPIError, SQLAlchemyError) as exc:
            raise LeadStoreUnavailable(
                f"leads database unavailable: {exc.__class__.__name__}"
            ) from None

    def insert(self, lead: Lead) -> bool:
        """Write the lead; False when its id exists already (written before, or a tombstone)."""
        return self._insert_new(
            tenant=lead.tenant,
            lead_id=lead.lead_id,
            status=ACTIVE,
            user_id=lead.user_id,
            hold_id=lead.hold_id,
            credits=lead.credits,
            lead_data=lead.lead_data,
            created_at=lead.created_at,
        )

    def tombstone(self, tenant: str, lead_id: str, hold_id: str) -> bool:
        """Claim `lead_id` for nothing, so no lead can take it later: True when claimed, False
        when the lead exists (then its hold must be committed, not voided)."""
        claimed = self._insert_new(
            tenant=tenant,
            lead_id=lead_id,
            status=VOID,
            user_id="",
            hold_id=hold_id,
            credits="0",
            lead_data=None,
            created_at="",
        )
        return claimed or self.status(tenant, lead_id) == VOID

    def _insert_new(self, **row: Any) -> bool:
        """Insert a row of a lead id not used yet (uncharged, created now); False when used."""
        try:
            with self._connect() as conn:
                conn.execute(
                    leads.insert().values(**row, created_ms=int(time.time() * 1000), charged=False)
                )
        except IntegrityError:
            return False
        return True

    def status(self, tenant: str, lead_id: str) -> str | None:
        """active, void, or None when the id was never used."""
        query = sa.select(leads.c.status).where(_row(tenant, lead_id))
        with self._connect() as conn:
            return conn.execute(query).scalar_one_or_none()

    def get(self, tenant: str, lead_id: str) -> Lead | None:
        """The tenant's lead, or None (no such lead in this tenant, or a tombstone)."""
        query = sa.select(leads).where(_row(tenant, lead_id), leads.c.status == ACTIVE)
        with self._connect() as conn:
            row = conn.execute(query).mappings().one_or_none()
        return None if row is None else _lead(row)

    def mark_charged(self, tenant: str, lead_id: str) -> None:
        with self._connect() as conn:
            conn.execute(leads.update().where(_row(tenant, lead_id)).values(charged=True))

    def uncharged(self, tenant: str, older_than_ms: int, limit: int = 500) -> list[Lead]:
        """Leads of `tenant` written before `older_than_ms` whose charge is not confirmed."""
        query = (
            sa.select(leads)
            .where(
                leads.c.tenant == tenant,
                leads.c.charged.is_(False),
                leads.c.status == ACTIVE,
                leads.c.created_ms < older_than_ms,
            )
            .order_by(leads.c.created_ms)
            .limit(limit)
        )
        with self._connect() as conn:
            return [_lead(row) for row in conn.execute(query).mappings()]

    def tenants_with_uncharged(self) -> list[str]:
        query = sa.select(leads.c.tenant).where(
            leads.c.charged.is_(False), leads.c.status == ACTIVE
        )
        with self._connect() as conn:
            return sorted(set(conn.execute(query.distinct()).scalars()))

    def count(self, tenant: str, *, charged: bool | None = None) -> int:
        """Active leads of `tenant` (only charged or uncharged ones when asked)."""
        query = sa.select(sa.func.count()).where(leads.c.tenant == tenant, leads.c.status == ACTIVE)
        if charged is not None:
            query = query.where(leads.c.charged.is_(charged))
        with self._connect() as conn:
            return int(conn.execute(query).scalar_one())

    def close(self) -> None:
        self.engine.dispose()


def _row(tenant: str, lead_id: str) -> Any:
    return sa.and_(leads.c.tenant == tenant, leads.c.lead_id == lead_id)


def _lead(row: Any) -> Lead:
    return Lead(
        tenant=row["tenant"],
        lead_id=row["lead_id"],
        user_id=row["user_id"],
        hold_id=row["hold_id"],
        credits=row["credits"],
        lead_data=row["lead_data"] or {},
        created_at=row["created_at"],
        charged=bool(row["charged"]),
    )
