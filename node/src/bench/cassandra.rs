//! Apache Cassandra over CQL (the `scylla` driver, which speaks Cassandra's native
//! protocol): one table `ycsb.usertable (y_id text PRIMARY KEY, field0 blob)` in a
//! keyspace with replication factor 3, prepared statements at QUORUM for reads and writes.

use std::sync::Arc;

use bytes::Bytes;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;

use super::target::{Target, TargetError};
use crate::rpc::transport::BoxFuture;

pub const KEYSPACE_CQL: &str = "CREATE KEYSPACE IF NOT EXISTS ycsb WITH replication = \
     {'class': 'SimpleStrategy', 'replication_factor': 3}";
pub const TABLE_CQL: &str =
    "CREATE TABLE IF NOT EXISTS ycsb.usertable (y_id text PRIMARY KEY, field0 blob)";
pub const INSERT_CQL: &str = "INSERT INTO ycsb.usertable (y_id, field0) VALUES (?, ?)";
pub const SELECT_CQL: &str = "SELECT field0 FROM ycsb.usertable WHERE y_id = ?";

pub struct CassandraTarget {
    session: Session,
    insert: PreparedStatement,
    select: PreparedStatement,
    label: String,
}

fn err(e: impl std::fmt::Display) -> TargetError {
    TargetError::Other(e.to_string())
}

impl CassandraTarget {
    /// Connects to the nodes at `endpoints` (`host:9042`), creates the keyspace and table
    /// if absent, and prepares the statements.
    pub async fn connect(
        endpoints: &[String],
        label: &str,
    ) -> Result<Arc<CassandraTarget>, TargetError> {
        let session = SessionBuilder::new()
            .known_nodes(endpoints)
            .build()
            .await
            .map_err(err)?;
        session
            .query_unpaged(KEYSPACE_CQL, &[])
            .await
            .map_err(err)?;
        session.query_unpaged(TABLE_CQL, &[]).await.map_err(err)?;
        session.await_schema_agreement().await.map_err(err)?;
        let mut insert = session.prepare(INSERT_CQL).await.map_err(err)?;
        insert.set_consistency(Consistency::Quorum);
        let mut select = session.prepare(SELECT_CQL).await.map_err(err)?;
        select.set_consistency(Consistency::Quorum);
        Ok(Arc::new(CassandraTarget {
            session,
            insert,
            select,
            label: label.to_string(),
        }))
    }
}

impl Target for CassandraTarget {
    fn name(&self) -> String {
        self.label.clone()
    }

    // One lane: the driver routes each statement to a replica of its key itself.
    fn read<'a>(&'a self, _lane: usize, key: &'a str) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            let result = self
                .session
                .execute_unpaged(&self.select, (key,))
                .await
                .map_err(err)?;
            let rows = result.into_rows_result().map_err(err)?;
            // At most one row (the key is the primary key); absent keys are not errors.
            if rows.rows_num() > 1 {
                return Err(TargetError::Other(format!(
                    "{} rows for one key",
                    rows.rows_num()
                )));
            }
            Ok(())
        })
    }

    fn update<'a>(
        &'a self,
        _lane: usize,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            self.session
                .execute_unpaged(&self.insert, (key, value.as_ref()))
                .await
                .map_err(err)?;
            Ok(())
        })
    }
}
