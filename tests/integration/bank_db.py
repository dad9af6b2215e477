"""The bank for the consistency proof: transfers commit a debit, a credit and a ledger row together, so
any copy that is not one snapshot of both tables shows balances that disagree with the ledger."""

from __future__ import annotations

import asyncio
import random

import asyncmy
from asyncmy.errors import MySQLError

from backup_common.adapters.mysql import db
from backup_common.engine.database.target import MysqlTarget
from tests.integration.source_db import SCHEMA_CHARSET, SCHEMA_COLLATION, connect, recreate_database, rows, run

# --- the bank: a cross-table invariant for the consistency proof ----------------------------------


async def build_bank(target: MysqlTarget, accounts: int = 200, balance: int = 1000) -> None:
    """Drops and creates the target database with ``accounts`` accounts of ``balance`` each and an empty ledger."""
    await recreate_database(target, charset=SCHEMA_CHARSET, collation=SCHEMA_COLLATION)
    conn = await connect(target)
    try:
        await run(
            conn,
            "CREATE TABLE accounts (id INT NOT NULL PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB",
            "CREATE TABLE ledger (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, from_account INT NOT NULL,"
            " to_account INT NOT NULL, amount INT NOT NULL, KEY from_account (from_account),"
            " KEY to_account (to_account)) ENGINE=InnoDB",
        )
        async with conn.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO accounts (id, balance) VALUES (%s, %s)",
                [(number, balance) for number in range(1, accounts + 1)],
            )
    finally:
        await conn.ensure_closed()


_RETRYABLE = {1205, 1213}  # lock wait timeout, deadlock


async def transfer_storm(target: MysqlTarget, stop: asyncio.Event, *, workers: int = 4) -> int:
    """Transfers money between random accounts on ``workers`` connections until ``stop`` is set.

    Each transfer debits one account, credits another and records a ledger row in one transaction.
    Returns the number of transfers committed.
    """
    conn = await connect(target)
    try:
        (row,) = await rows(conn, "SELECT MIN(id) AS low, MAX(id) AS high FROM accounts")
        low, high = int(row["low"]), int(row["high"])
    finally:
        await conn.ensure_closed()

    async def worker(seed: int) -> int:
        rng = random.Random(seed)
        connection = await asyncmy.connect(db=target.database, **db.connection_options(target))
        committed = 0
        try:
            while not stop.is_set():
                debit, credit = rng.sample(range(low, high + 1), 2)
                amount = rng.randint(1, 100)
                try:
                    await connection.begin()
                    async with connection.cursor() as cursor:
                        # In id order, so two transfers never wait for each other in a cycle.
                        for account, change in sorted([(debit, -amount), (credit, amount)]):
                            await cursor.execute(
                                "UPDATE accounts SET balance = balance + %s WHERE id = %s", (change, account)
                            )
                        await cursor.execute(
                            "INSERT INTO ledger (from_account, to_account, amount) VALUES (%s, %s, %s)",
                            (debit, credit, amount),
                        )
                    await connection.commit()
                    committed += 1
                except MySQLError as exc:
                    if exc.args[0] not in _RETRYABLE:
                        raise
                    await connection.rollback()
                await asyncio.sleep(0)
        finally:
            await connection.ensure_closed()
        return committed

    done = await asyncio.gather(*(worker(seed) for seed in range(workers)))
    return sum(done)


async def ledger_count(target: MysqlTarget) -> int:
    """Transfers committed so far (read outside any long transaction, so always current)."""
    conn = await connect(target)
    try:
        (row,) = await rows(conn, "SELECT COUNT(*) AS transfers FROM ledger")
        return int(row["transfers"])
    finally:
        await conn.ensure_closed()


async def bank_inconsistencies(target: MysqlTarget, *, accounts: int = 200, balance: int = 1000) -> list[str]:
    """What is wrong with the bank in the target: empty when every balance agrees with the ledger."""
    conn = await connect(target)
    try:
        (totals,) = await rows(conn, "SELECT COUNT(*) AS accounts, SUM(balance) AS total FROM accounts")
        problems = []
        if int(totals["accounts"]) != accounts:
            problems.append(f"{totals['accounts']} accounts instead of {accounts}")
        if int(totals["total"] or 0) != accounts * balance:
            problems.append(f"the balances sum to {totals['total']} instead of {accounts * balance}")
        mismatched = await rows(
            conn,
            "SELECT a.id, a.balance, COALESCE(c.total, 0) AS credits, COALESCE(d.total, 0) AS debits"
            " FROM accounts a"
            " LEFT JOIN (SELECT to_account, SUM(amount) AS total FROM ledger GROUP BY to_account) c"
            "   ON c.to_account = a.id"
            " LEFT JOIN (SELECT from_account, SUM(amount) AS total FROM ledger GROUP BY from_account) d"
            "   ON d.from_account = a.id"
            " WHERE a.balance <> %s + COALESCE(c.total, 0) - COALESCE(d.total, 0)"
            " ORDER BY a.id",
            (balance,),
        )
        for row in mismatched[:10]:
            problems.append(
                f"account {row['id']} holds {row['balance']} but the ledger says"
                f" {balance} + {row['credits']} - {row['debits']}"
            )
        if len(mismatched) > 10:
            problems.append(f"… and {len(mismatched) - 10} more accounts disagree with the ledger")
        return problems
    finally:
        await conn.ensure_closed()
