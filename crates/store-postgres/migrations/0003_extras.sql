-- Hongyan schema 3: message extras (revoked, edited, read), key-value tables of
-- hongyan-store (Table::ChanSeqExtra, Table::ChanVersionSeq, Table::ChanSeqUidRead). The primary key on
-- (channel, extra version) is what keeps two nodes from giving one version twice.
-- `{schema}` is replaced by storage.postgres_schema.

CREATE TABLE {schema}.chanseq_extra (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.chanversion_seq (k bytea PRIMARY KEY, v bytea NOT NULL);
-- (channel, seq, uid) → when: read receipts (Table::ChanSeqUidRead).
CREATE TABLE {schema}.chansequid_read (k bytea PRIMARY KEY, v bytea NOT NULL);
