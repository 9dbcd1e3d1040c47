//! The SQL: each table's statements, formatted once, and the pool's operations on
//! them (reads, pipelined write transactions, expectations locked first).

use deadpool_postgres::Pool;
use futures_util::future::try_join_all;
use hongyan_store::{Entry, Order, Table, Write};

use crate::faults::{Fault, commit_fault, fault, pool_fault};

pub(crate) fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// The SQL of one table, formatted once.
#[derive(Debug)]
pub(crate) struct TableSql {
    get: String,
    get_many: String,
    /// Up to $3 entries of each range, ascending then descending.
    scan_ranges: [String; 2],
    upsert: String,
    insert: String,
    delete: String,
    /// The rows that hold the expected values, locked until the commit. Exclusively:
    /// two batches that expect a row and then replace it would deadlock on shared
    /// locks; this way the second waits for the first and then finds the row changed.
    expect: String,
    /// Ascending and descending scans with an upper bound.
    range: [String; 2],
    /// The same without one.
    from: [String; 2],
}

impl TableSql {
    pub(crate) fn new(schema: &str, table: Table) -> Self {
        let t = format!("{schema}.{}", table.name());
        let order = |o: &str| format!("ORDER BY k {o} LIMIT $3");
        Self {
            get: format!("SELECT v FROM {t} WHERE k = $1"),
            get_many: format!("SELECT k, v FROM {t} WHERE k = ANY($1::bytea[])"),
            scan_ranges: ["ASC", "DESC"].map(|o| {
                format!(
                    "SELECT r.i, m.k, m.v FROM unnest($1::bytea[], $2::bytea[]) WITH ORDINALITY AS r(s, e, i) \
                     CROSS JOIN LATERAL (SELECT k, v FROM {t} WHERE k >= r.s AND k < r.e ORDER BY k {o} LIMIT $3) m \
                     ORDER BY r.i, m.k {o}"
                )
            }),
            upsert: format!(
                "INSERT INTO {t} (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (k) DO UPDATE SET v = excluded.v"
            ),
            insert: format!("INSERT INTO {t} (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[])"),
            delete: format!("DELETE FROM {t} WHERE k = ANY($1::bytea[])"),
            expect: format!(
                "SELECT t.k FROM {t} t JOIN unnest($1::bytea[], $2::bytea[]) AS e(k, v) ON t.k = e.k AND t.v = e.v \
                 FOR UPDATE OF t"
            ),
            range: [
                format!("SELECT k, v FROM {t} WHERE k >= $1 AND k < $2 {}", order("ASC")),
                format!("SELECT k, v FROM {t} WHERE k >= $1 AND k < $2 {}", order("DESC")),
            ],
            from: [
                format!("SELECT k, v FROM {t} WHERE k >= $1 ORDER BY k ASC LIMIT $2"),
                format!("SELECT k, v FROM {t} WHERE k >= $1 ORDER BY k DESC LIMIT $2"),
            ],
        }
    }
}

/// What every task needs: the pool and the SQL.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    pub(crate) sql: Vec<TableSql>,
}

impl Shared {
    fn sql(&self, table: Table) -> &TableSql {
        let index = Table::ALL.iter().position(|t| *t == table).unwrap_or_default();
        &self.sql[index]
    }

    pub(crate) async fn get(&self, table: Table, key: Vec<u8>) -> std::result::Result<Option<Vec<u8>>, Fault> {
        let client = self.pool.get().await.map_err(pool_fault)?;
        let statement = client.prepare_cached(&self.sql(table).get).await.map_err(|e| fault(&e))?;
        let row = client.query_opt(&statement, &[&key]).await.map_err(|e| fault(&e))?;
        Ok(row.map(|r| r.get(0)))
    }

    pub(crate) async fn get_many(
        &self,
        table: Table,
        keys: Vec<Vec<u8>>,
    ) -> std::result::Result<Vec<Option<Vec<u8>>>, Fault> {
        let client = self.pool.get().await.map_err(pool_fault)?;
        let statement = client.prepare_cached(&self.sql(table).get_many).await.map_err(|e| fault(&e))?;
        let rows = client.query(&statement, &[&keys]).await.map_err(|e| fault(&e))?;
        let found: std::collections::HashMap<Vec<u8>, Vec<u8>> =
            rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    pub(crate) async fn scan_ranges(
        &self,
        table: Table,
        starts: Vec<Vec<u8>>,
        ends: Vec<Vec<u8>>,
        limit: usize,
        order: Order,
    ) -> std::result::Result<Vec<Vec<Entry>>, Fault> {
        let client = self.pool.get().await.map_err(pool_fault)?;
        let text = &self.sql(table).scan_ranges[usize::from(order == Order::Descending)];
        let statement = client.prepare_cached(text).await.map_err(|e| fault(&e))?;
        let rows = client.query(&statement, &[&starts, &ends, &limit_of(limit)]).await.map_err(|e| fault(&e))?;
        let mut out = vec![Vec::new(); starts.len()];
        for row in rows {
            let index: i64 = row.get(0);
            if let Some(slot) = usize::try_from(index - 1).ok().and_then(|i| out.get_mut(i)) {
                slot.push((row.get(1), row.get(2)));
            }
        }
        Ok(out)
    }

    pub(crate) async fn scan(
        &self,
        table: Table,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
        order: Order,
    ) -> std::result::Result<Rows, Fault> {
        let client = self.pool.get().await.map_err(pool_fault)?;
        let sql = self.sql(table);
        let direction = usize::from(order == Order::Descending);
        let limit = limit_of(limit);
        let rows = match &end {
            Some(end) => {
                let statement = client.prepare_cached(&sql.range[direction]).await.map_err(|e| fault(&e))?;
                client.query(&statement, &[&start, end, &limit]).await
            }
            None => {
                let statement = client.prepare_cached(&sql.from[direction]).await.map_err(|e| fault(&e))?;
                client.query(&statement, &[&start, &limit]).await
            }
        }
        .map_err(|e| fault(&e))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// One transaction: `BEGIN` and per table its inserts, puts and deletes, sent
    /// pipelined (one round trip), then `COMMIT` once all of them succeeded.
    pub(crate) async fn write(&self, tables: Vec<TableWrites>) -> std::result::Result<(), Fault> {
        let client = self.pool.get().await.map_err(pool_fault)?;
        let mut statements = Vec::with_capacity(tables.len() * 3);
        // Expectations first: their rows are locked before anything is written,
        // so none of them can change before the commit.
        let mut expected = Vec::new();
        for w in tables.iter().filter(|w| !w.expects.0.is_empty()) {
            let statement = client.prepare_cached(&self.sql(w.table).expect).await.map_err(|e| fault(&e))?;
            expected.push((w.table, w.expects.0.len() as u64));
            statements.push((statement, Some(&w.expects), None));
        }
        for w in &tables {
            let sql = self.sql(w.table);
            for (rows, text) in [(&w.inserts, &sql.insert), (&w.puts, &sql.upsert)] {
                if !rows.0.is_empty() {
                    let statement = client.prepare_cached(text).await.map_err(|e| fault(&e))?;
                    statements.push((statement, Some(rows), None));
                }
            }
            if !w.deletes.is_empty() {
                let statement = client.prepare_cached(&sql.delete).await.map_err(|e| fault(&e))?;
                statements.push((statement, None, Some(&w.deletes)));
            }
        }
        let conn = &**client;
        // Requests go out in the order the futures are first polled: BEGIN first.
        let begin = conn.batch_execute("BEGIN");
        let work = try_join_all(statements.iter().map(|(statement, rows, deletes)| async move {
            match (rows, deletes) {
                (Some((keys, values)), _) => conn.execute(statement, &[keys, values]).await,
                (None, Some(keys)) => conn.execute(statement, &[keys]).await,
                (None, None) => Ok(0),
            }
        }));
        let (begun, done) = futures_util::future::join(begin, work).await;
        let counts = match begun.and(done) {
            Ok(counts) => counts,
            Err(e) => {
                // No COMMIT was sent: nothing is applied. (A connection that is gone is
                // dropped by the pool when it comes back.)
                let _ = conn.batch_execute("ROLLBACK").await;
                return Err(fault(&e));
            }
        };
        if let Some((table, _)) =
            expected.iter().zip(&counts).find(|((_, wanted), found)| wanted != *found).map(|p| p.0)
        {
            let _ = conn.batch_execute("ROLLBACK").await;
            return Err(Fault::Conflict(format!("a row of {} changed", table.name())));
        }
        conn.batch_execute("COMMIT").await.map_err(|e| commit_fault(&e))
    }

    pub(crate) async fn ping(&self) -> std::result::Result<(), Fault> {
        let client = self.pool.get().await.map_err(pool_fault)?;
        client.simple_query("SELECT 1").await.map_err(|e| fault(&e))?;
        Ok(())
    }
}

/// Keys and values, as two arrays for `unnest`.
pub(crate) type Columns = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// One table's share of a batch, last write per key.
#[derive(Debug)]
pub(crate) struct TableWrites {
    pub(crate) table: Table,
    pub(crate) inserts: Columns,
    pub(crate) puts: Columns,
    pub(crate) deletes: Vec<Vec<u8>>,
    /// Rows that must hold these values, one expectation per key and value.
    pub(crate) expects: Columns,
}

/// What a batch finally does to one key.
enum Last {
    Insert(Vec<u8>),
    Put(Vec<u8>),
    Delete,
}

/// Groups a batch by table, keeping only the last write to each key (a statement may
/// not touch a row twice).
pub(crate) fn group(writes: Vec<Write>) -> Vec<TableWrites> {
    use std::collections::BTreeMap;
    let mut last: BTreeMap<(Table, Vec<u8>), Last> = BTreeMap::new();
    let mut expects = std::collections::BTreeSet::new();
    for w in writes {
        match w {
            Write::Insert(t, k, v) => last.insert((t, k), Last::Insert(v)),
            Write::Put(t, k, v) => last.insert((t, k), Last::Put(v)),
            Write::Delete(t, k) => last.insert((t, k), Last::Delete),
            Write::Expect(t, k, v) => {
                expects.insert((t, k, v));
                None
            }
        };
    }
    let mut out: Vec<TableWrites> = Vec::new();
    let of = |out: &mut Vec<TableWrites>, table: Table| -> usize {
        if let Some(i) = out.iter().position(|w| w.table == table) {
            return i;
        }
        let empty = || (Vec::new(), Vec::new());
        out.push(TableWrites { table, inserts: empty(), puts: empty(), deletes: Vec::new(), expects: empty() });
        out.len() - 1
    };
    for (table, key, value) in expects {
        let i = of(&mut out, table);
        out[i].expects.0.push(key);
        out[i].expects.1.push(value);
    }
    for ((table, key), write) in last {
        let i = of(&mut out, table);
        let Some(w) = out.get_mut(i) else { continue };
        match write {
            Last::Insert(v) => {
                w.inserts.0.push(key);
                w.inserts.1.push(v);
            }
            Last::Put(v) => {
                w.puts.0.push(key);
                w.puts.1.push(v);
            }
            Last::Delete => w.deletes.push(key),
        }
    }
    out
}
