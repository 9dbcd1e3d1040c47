//! Versioned migrations: SQL files kept in `migrations/`, applied once each and in
//! order, recorded in `<schema>.schema_migrations`. Several nodes may start at once:
//! each migration's first statement inserts its version, so a second node blocks on
//! that row until the first commits, then finds it applied. No advisory locks (not
//! every PostgreSQL-compatible database has them).

use deadpool_postgres::Object;

use crate::ConnectError;

/// Every migration: version, name, SQL (with `{schema}` for the schema).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "tables", include_str!("../migrations/0001_tables.sql")),
    (2, "cluster", include_str!("../migrations/0002_cluster.sql")),
    (3, "extras", include_str!("../migrations/0003_extras.sql")),
];

/// The newest schema version this binary knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// SQLSTATE of a unique violation, and of a schema that already exists.
const UNIQUE_VIOLATION: &str = "23505";
const DUPLICATE_SCHEMA: &str = "42P06";

fn failed(schema: &str, e: &tokio_postgres::Error) -> ConnectError {
    ConnectError::Migration { schema: schema.to_owned(), reason: crate::describe(e) }
}

fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|db| db.code().code())
}

/// Brings `schema` to [`SCHEMA_VERSION`].
pub(crate) async fn run(client: &mut Object, schema: &str) -> Result<(), ConnectError> {
    let setup = format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())"
    );
    // Two nodes creating the schema at once: one of them sees a duplicate; again.
    for attempt in 0.. {
        match client.batch_execute(&setup).await {
            Ok(()) => break,
            Err(e) if attempt < 3 && matches!(code(&e), Some(UNIQUE_VIOLATION | DUPLICATE_SCHEMA)) => continue,
            Err(e) => return Err(failed(schema, &e)),
        }
    }
    let current: i32 = client
        .query_one(&format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations"), &[])
        .await
        .map_err(|e| failed(schema, &e))?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(ConnectError::NewerSchema { schema: schema.to_owned(), found: current, known: SCHEMA_VERSION });
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > current) {
        let tx = client.transaction().await.map_err(|e| failed(schema, &e))?;
        let record = format!("INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)");
        match tx.execute(&record, &[version, name]).await {
            Ok(_) => {}
            // Another node applied it meanwhile.
            Err(e) if code(&e) == Some(UNIQUE_VIOLATION) => continue,
            Err(e) => return Err(failed(schema, &e)),
        }
        tx.batch_execute(&sql.replace("{schema}", schema)).await.map_err(|e| failed(schema, &e))?;
        tx.commit().await.map_err(|e| failed(schema, &e))?;
        tracing::info!(schema, version, name, "PostgreSQL schema migrated");
    }
    Ok(())
}
