"""`PostgresStore`: the inbox in a PostgreSQL database, next to the participant's own tables.

Needs the `postgres` extra (`pip install 'saga-operator[postgres]'`: psycopg 3). Handlers get a
`psycopg.Connection` as `tx` with the transaction open (parameters are `%s`, not `?`). Up to `pool_size`
handlers run at once, each on a connection and a thread of its own: a slow handler for one saga does not
hold up another saga's.

Each command is one transaction, which first takes a transaction-scoped advisory lock on the idempotency
key: the action and the compensation of a step (same key) never interleave, even from two replicas sharing
the database, whereas different sagas do not wait for each other. Before a handler runs, the store inserts
the command's inbox row as `pending` and settles it afterwards; a deferred constraint trigger refuses to
commit a transaction that still holds a pending row. So a handler that commits (`tx.commit()`,
`execute("COMMIT")`) cannot make its effect durable without the inbox row: its COMMIT fails, everything is
rolled back, and the delivery is answered `error` (retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Final

from saga_participants._handlers import Handler
from saga_participants._inbox import Decision, Disposition, Rollback, Stored, decide, invoke
from saga_plumbing import Backoff, retry_transient
from saga_protocol import Command, CommandKind, ErrorInfo, Outcome

if TYPE_CHECKING:
    from psycopg import Connection
    from psycopg.rows import TupleRow

INBOX_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS saga_inbox (
    idempotency_key  text        NOT NULL,
    kind             text        NOT NULL CHECK (kind IN ('action', 'compensation')),
    disposition      text        NOT NULL,
    outcome          text        CHECK (outcome IN ('succeeded', 'failed')),
    handler          text        NOT NULL,
    result           jsonb,
    error_reason     text,
    error_message    text,
    saga_uid         text        NOT NULL,
    saga_namespace   text        NOT NULL,
    saga_name        text        NOT NULL,
    step             text        NOT NULL,
    first_message_id text        NOT NULL,
    first_attempt    integer     NOT NULL,
    deliveries       integer     NOT NULL DEFAULT 1,
    recorded_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_delivery_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (idempotency_key, kind),
    CHECK ((disposition = 'pending') = (outcome IS NULL))
);
CREATE OR REPLACE FUNCTION saga_inbox_settled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM saga_inbox WHERE idempotency_key = NEW.idempotency_key AND kind = NEW.kind
               AND disposition = 'pending') THEN
        RAISE EXCEPTION 'saga_inbox: the % of % is still pending at commit: a handler tried to end the '
                        'store''s transaction', NEW.kind, NEW.idempotency_key
              USING ERRCODE = 'invalid_transaction_termination';
    END IF;
    RETURN NULL;
END $$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgname = 'saga_inbox_settled' AND tgrelid = 'saga_inbox'::regclass) THEN
        CREATE CONSTRAINT TRIGGER saga_inbox_settled AFTER INSERT ON saga_inbox
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION saga_inbox_settled();
    END IF;
END $$;
"""
_SAVEPOINT: Final = "saga_handler"
_PENDING: Final = "pending"
#: Serializes schema creation between replicas starting together (an arbitrary, fixed advisory lock id).
_SCHEMA_LOCK: Final = 0x5A6A_1B0C


class PostgresStore:
    """The inbox in PostgreSQL. `conninfo` is a libpq connection string or URI
    (`postgresql://user@host/db`); `schema` is SQL run once at open (use `CREATE ... IF NOT EXISTS`)."""

    def __init__(
        self, conninfo: str, *, schema: str | None = None, pool_size: int = 4, open_timeout: float = 60.0
    ) -> None:
        try:
            import psycopg  # noqa: F401  (the optional extra: fail here, not at the first command)
        except ImportError as exc:
            raise ImportError("PostgresStore needs psycopg: pip install 'saga-operator[postgres]'") from exc
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {pool_size}")
        self.conninfo = conninfo
        self.schema = schema
        self.pool_size = pool_size
        self.open_timeout = open_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._idle: asyncio.Queue[Connection[TupleRow] | None] | None = None
        self._connections: set[Connection[TupleRow]] = set()
        self._lock = threading.Lock()

    def connect(self) -> Connection[TupleRow]:
        """A new connection (not in autocommit mode: psycopg opens a transaction at the first statement)."""
        import psycopg

        conn = psycopg.connect(self.conninfo, connect_timeout=10)
        with self._lock:
            self._connections.add(conn)
        return conn

    async def open(self) -> None:
        import psycopg

        if self._executor is not None:
            raise RuntimeError(f"{self} is already open")
        executor = ThreadPoolExecutor(max_workers=self.pool_size, thread_name_prefix="saga-postgres")
        loop = asyncio.get_running_loop()

        async def create_schema() -> Connection[TupleRow]:
            return await loop.run_in_executor(executor, self._create_schema)

        try:
            first = await retry_transient(
                f"connecting to PostgreSQL ({self})",
                create_schema,
                transient=(psycopg.OperationalError,),
                backoff=Backoff(initial=0.5, maximum=5.0),
                give_up_after=self.open_timeout,
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        idle: asyncio.Queue[Connection[TupleRow] | None] = asyncio.Queue()
        idle.put_nowait(first)
        for _ in range(self.pool_size - 1):
            idle.put_nowait(None)  # connected when first needed
        self._executor, self._idle = executor, idle

    def _create_schema(self) -> Connection[TupleRow]:
        conn = self.connect()
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(INBOX_SCHEMA)
            if self.schema:
                conn.execute(self.schema)  # the participant's own SQL, not user input
            conn.commit()
        except BaseException:
            self._discard(conn)
            raise
        return conn

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        self._idle = None
        if executor is None:
            return
        # Waits for a handler still running after its message was abandoned: its transaction finishes.
        await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)
        with self._lock:
            connections, self._connections = set(self._connections), set()
        for conn in connections:
            conn.close()

    async def apply(self, command: Command, handler: Handler) -> Decision:
        idle, executor = self._idle, self._executor
        if idle is None or executor is None:
            raise RuntimeError(f"{self} is not open")
        loop = asyncio.get_running_loop()
        slot = await idle.get()

        def work() -> Decision:
            conn = slot
            try:
                if conn is None or conn.closed or conn.broken:
                    if conn is not None:
                        self._discard(conn)
                    conn = None
                    conn = self.connect()
                return self._apply(conn, command, handler)
            finally:
                # Returned by the thread, not by the awaiting coroutine: a cancelled caller (a stopping
                # participant) must not hand out a connection that a handler is still using.
                loop.call_soon_threadsafe(idle.put_nowait, conn)

        return await loop.run_in_executor(executor, work)

    def _discard(self, conn: Connection[TupleRow]) -> None:
        with self._lock:
            self._connections.discard(conn)
        conn.close()

    def _apply(self, conn: Connection[TupleRow], command: Command, handler: Handler) -> Decision:
        try:
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (command.idempotency_key,))
            decision = decide(_PostgresTransaction(conn), command, handler)
        except Rollback as rollback:
            conn.rollback()
            return rollback.decision
        except BaseException:
            if not conn.broken:
                with contextlib.suppress(Exception):  # the original error is the one to see
                    conn.rollback()
            raise
        conn.commit()
        return decision

    def __repr__(self) -> str:
        import psycopg.conninfo

        try:
            params = psycopg.conninfo.conninfo_to_dict(self.conninfo)
        except psycopg.ProgrammingError:
            return "PostgresStore(<invalid conninfo>)"
        where = f"{params.get('host', '')}:{params.get('port', '')}/{params.get('dbname', '')}"
        return f"PostgresStore({where!r})"  # never the password


class _PostgresTransaction:
    def __init__(self, conn: Connection[TupleRow]) -> None:
        self._conn = conn

    @property
    def connection(self) -> Connection[TupleRow]:
        return self._conn

    def lookup(self, idempotency_key: str, kind: CommandKind) -> Stored | None:
        row = self._conn.execute(
            "SELECT outcome, handler, result, error_reason, error_message FROM saga_inbox"
            " WHERE idempotency_key = %s AND kind = %s AND disposition <> %s",
            (idempotency_key, kind.value, _PENDING),
        ).fetchone()
        if row is None:
            return None
        return Stored(
            outcome=Outcome(row[0]),
            handler=row[1],
            result=row[2],
            error=ErrorInfo(reason=row[3], message=row[4] or "") if row[3] is not None else None,
        )

    def count_delivery(self, command: Command) -> None:
        self._conn.execute(
            "UPDATE saga_inbox SET deliveries = deliveries + 1, last_delivery_at = clock_timestamp()"
            " WHERE idempotency_key = %s AND kind = %s",
            (command.idempotency_key, command.kind.value),
        )

    def _insert(self, command: Command, disposition: str, decision: Decision | None) -> None:
        from psycopg.types.json import Jsonb

        result = decision.result if decision is not None else None
        error = decision.error if decision is not None else None
        self._conn.execute(
            "INSERT INTO saga_inbox (idempotency_key, kind, disposition, outcome, handler, result, error_reason,"
            " error_message, saga_uid, saga_namespace, saga_name, step, first_message_id, first_attempt)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (idempotency_key, kind) DO UPDATE SET disposition = EXCLUDED.disposition,"
            " outcome = EXCLUDED.outcome, result = EXCLUDED.result, error_reason = EXCLUDED.error_reason,"
            " error_message = EXCLUDED.error_message, recorded_at = clock_timestamp(),"
            " last_delivery_at = clock_timestamp()"
            " WHERE saga_inbox.disposition = 'pending'",
            (
                command.idempotency_key,
                command.kind.value,
                disposition,
                decision.outcome.value if decision is not None else None,
                command.action,
                Jsonb(result) if result is not None else None,
                error.reason if error else None,
                error.message if error else None,
                command.saga_uid,
                command.saga_namespace,
                command.saga_name,
                command.step,
                command.message_id,
                command.attempt,
            ),
        )

    def record(self, command: Command, decision: Decision) -> None:
        self._insert(command, decision.disposition.value, decision)

    def run_handler(self, command: Command, call: Callable[[], object]) -> Decision:
        import psycopg
        from psycopg.pq import TransactionStatus

        conn = self._conn
        self._insert(command, _PENDING, None)
        conn.execute(f"SAVEPOINT {_SAVEPOINT}")
        decision = invoke(call)
        if decision.disposition is Disposition.TRANSIENT:
            return decision  # the whole transaction is rolled back
        if conn.info.transaction_status is not TransactionStatus.INTRANS:
            # The handler committed (refused by the trigger, so nothing is durable), rolled back, or left
            # the transaction failed: answer error, nothing stored.
            return Decision.transient(RuntimeError(f"handler {command.action} ended or broke the store's transaction"))
        try:
            if decision.disposition is Disposition.BUSINESS_FAILED:
                # Undo whatever the handler wrote before refusing: a failed action applies nothing.
                conn.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
            conn.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
        except psycopg.Error as exc:
            return Decision.transient(RuntimeError(f"handler {command.action} released the store's savepoint: {exc}"))
        return decision
