//! A bench's scratch database, made afresh for each run
//! (`#[path]`-included, as proc_stat.rs).

use sqlx::{Executor, PgConnection};

/// Drops `name` if it exists (ending its sessions: a run that failed midway
/// may have left some), then creates it empty.
pub async fn recreate(admin: &mut PgConnection, name: &str) -> sqlx::Result<()> {
    remove(admin, name).await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await?;
    Ok(())
}

/// Drops `name` if it exists, ending its sessions.
pub async fn remove(admin: &mut PgConnection, name: &str) -> sqlx::Result<()> {
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .await?;
    Ok(())
}
