-- Hongyan schema 2: cluster membership (docs/cluster.md). Plain relational tables,
-- read and written by hongyan-cluster, not through the key-value contract.
-- `{schema}` is replaced by storage.postgres_schema.

-- One row: the cluster's id, which names its NATS subjects, so clusters sharing a
-- NATS server but not a database never hear each other.
CREATE TABLE {schema}.cluster_info (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    cluster_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO {schema}.cluster_info (cluster_id) VALUES (replace(gen_random_uuid()::text, '-', ''));

-- One row per node_id. Times are the database's clock; a node is live while
-- left_at IS NULL AND heartbeat_at + lease_ms > now().
CREATE TABLE {schema}.cluster_nodes (
    node_id integer PRIMARY KEY,
    boot_id text NOT NULL,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    lease_ms integer NOT NULL,
    left_at timestamptz,
    ready boolean NOT NULL DEFAULT false,
    tcp_addr text NOT NULL DEFAULT '',
    ws_addr text NOT NULL DEFAULT '',
    wss_addr text NOT NULL DEFAULT '',
    intranet_tcp_addr text NOT NULL DEFAULT '',
    api_addr text NOT NULL DEFAULT '',
    connections bigint NOT NULL DEFAULT 0,
    owned_channels bigint NOT NULL DEFAULT 0,
    nats boolean NOT NULL DEFAULT false
);

-- Channel ownership claims: a key-value table of hongyan-store (Table::ChanOwner),
-- channel → (owner node, epoch, boot). Every log batch of a cluster node expects its
-- claims' rows unchanged (Write::Expect), so a node that lost a claim stores nothing.
CREATE TABLE {schema}.chan_owner (k bytea PRIMARY KEY, v bytea NOT NULL);
