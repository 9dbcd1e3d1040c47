-- Hongyan schema 3: message extras (revoked, edited, read, reacted to), key-value
-- tables of hongyan-store (Table::ChanExtraVersion, Table::ChanSeqExtra,
-- Table::ChanVersionSeq, Table::ChanSeqUidRead, Table::ChanSeqUidReaction). Every
-- change expects the channel's counter row unchanged (SELECT … FOR UPDATE), which is
-- what keeps two nodes from giving one version twice.
-- `{schema}` is replaced by storage.postgres_schema.

-- channel → its newest extra version.
CREATE TABLE {schema}.chan_extraversion (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.chanseq_extra (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.chanversion_seq (k bytea PRIMARY KEY, v bytea NOT NULL);
-- (channel, seq, uid) → when: read receipts (Table::ChanSeqUidRead).
CREATE TABLE {schema}.chansequid_read (k bytea PRIMARY KEY, v bytea NOT NULL);
-- (channel, seq, uid, kind) → when: reactions (Table::ChanSeqUidReaction).
CREATE TABLE {schema}.chansequid_reaction (k bytea PRIMARY KEY, v bytea NOT NULL);
