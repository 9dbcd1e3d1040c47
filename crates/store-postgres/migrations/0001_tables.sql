-- Hongyan schema 1: one table per key-value table of hongyan-store (Table::name).
-- Keys and values are the store's own encodings (crates/store/src/codec.rs); the
-- primary key is the key, so uniqueness (of (channel, seq) in chanseq_msg, of
-- (channel, client_msg_no, sender) in chancmn_msg) is the database's to enforce.
-- `{schema}` is replaced by storage.postgres_schema.

CREATE TABLE {schema}.uiddev_device (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.chan_info (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.chanseq_msg (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.chancmn_msg (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.chanuid_subscriber (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.chanuid_blacklist (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.chanuid_whitelist (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.uidchan_conv (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.uid_system (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.uid_profile (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.chanuid_role (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.thread_info (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.groupthread_none (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.msgid_chanseq (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.group_profile (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.seq_journal (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.laneid_hook (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.name_meta (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE {schema}.chan_seqfloor (k bytea PRIMARY KEY, v bytea NOT NULL);
