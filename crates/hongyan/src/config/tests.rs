//! Loading, layering and validating the configuration.

use super::*;

fn empty_env() -> Env {
    Env::prefixed("HONGYAN_TEST_UNSET_PREFIX_").split("__")
}

#[test]
fn defaults_follow_wukongim() {
    let c = Config::load(None, empty_env(), Overrides::default()).unwrap();
    assert_eq!(c.api_addr().unwrap().to_string(), "127.0.0.1:5001");
    assert_eq!(c.manager_addr().unwrap().to_string(), "127.0.0.1:5300");
    assert_eq!(c.gateway.tcp_addr, "0.0.0.0:5100");
    assert_eq!(c.gateway.ws_addr, "0.0.0.0:5200");
    assert_eq!(c.data_dir, PathBuf::from("./data"));
    assert!(c.auth.token_auth);
}

#[test]
fn a_manager_token_opens_the_api_to_the_network() {
    let c = Config::from_toml("manager_token = \"s3cret\"").unwrap();
    assert_eq!(c.api_addr().unwrap().to_string(), "0.0.0.0:5001");
}

#[test]
fn unknown_keys_and_bad_values_name_the_key() {
    let e = Config::from_toml("[gateway]\ntcp_adr = \"0.0.0.0:1\"").unwrap_err().to_string();
    assert!(e.contains("tcp_adr"), "{e}");
    let e = Config::from_toml("node_id = \"one\"").unwrap_err().to_string();
    assert!(e.contains("node_id"), "{e}");
    let e = Config::from_toml("node_id = 5000").unwrap_err().to_string();
    assert_eq!(e, "configuration: node_id: must be between 1 and 1023");
    let e = Config::from_toml("[gateway]\nidle_timeout_secs = 0").unwrap_err().to_string();
    assert_eq!(e, "configuration: gateway.idle_timeout_secs: must be greater than 0");
    let e = Config::from_toml("[storage]\ndurability = \"sometimes\"").unwrap_err().to_string();
    assert!(e.contains("durability") && e.contains("sometimes"), "{e}");
    let e = Config::from_toml("[api]\naddr = \"localhost\"").unwrap_err().to_string();
    assert!(e.starts_with("configuration: api.addr:"), "{e}");
}

#[test]
#[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
fn flags_beat_environment_beats_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hongyan.toml");
    std::fs::write(&file, "node_id = 7\n[gateway]\ntcp_addr = \"127.0.0.1:7000\"\nws_addr = \"127.0.0.1:7001\"\n")
        .unwrap();
    figment::Jail::expect_with(|jail| {
        jail.set_env("HONGYAN_GATEWAY__TCP_ADDR", "127.0.0.1:8000");
        jail.set_env("HONGYAN_NODE_ID", "8");
        let flags = Overrides { tcp_addr: Some("127.0.0.1:9000".into()), ..Overrides::default() };
        let c = Config::load(Some(&file), Config::env(), flags).unwrap();
        assert_eq!(c.gateway.tcp_addr, "127.0.0.1:9000", "flag wins");
        assert_eq!(c.node_id, 8, "environment beats file");
        assert_eq!(c.gateway.ws_addr, "127.0.0.1:7001", "file beats default");
        jail.set_env("HONGYAN_GATEWAY__NOPE", "1");
        let e = Config::load(Some(&file), Config::env(), Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        Ok(())
    });
}

/// Every key of the example file has its row in docs/config.md, and every row's key
/// exists in the example file.
#[test]
fn config_doc_and_example_list_the_same_keys() {
    let example: toml_keys::Keys = toml_keys::keys(include_str!("../../../../config/hongyan.example.toml"));
    let doc = include_str!("../../../../docs/config.md");
    let documented: std::collections::BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(key, _)| key.to_owned()))
        .collect();
    assert_eq!(example, documented);
}

mod toml_keys {
    pub(super) type Keys = std::collections::BTreeSet<String>;

    /// Dotted keys of a flat TOML file with sections, commented-out keys included.
    pub(super) fn keys(text: &str) -> Keys {
        let mut section = String::new();
        let mut out = Keys::new();
        for line in text.lines().map(str::trim) {
            let line = line.strip_prefix("# ").filter(|l| l.contains(" = ")).unwrap_or(line);
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = format!("{name}.");
            } else if let Some((key, _)) = line.split_once(" = ").filter(|_| !line.starts_with('#')) {
                out.insert(format!("{section}{}", key.trim()));
            }
        }
        out
    }
}

#[test]
fn openim_needs_a_secret_and_an_admin() {
    let e = Config::from_toml("[openim]\nenabled = true").unwrap_err().to_string();
    assert!(e.contains("openim.secret"), "{e}");
    let e = Config::from_toml("[openim]\nenabled = true\nsecret = \"short\"").unwrap_err().to_string();
    assert!(e.contains("openim.secret: must be at least 16 bytes"), "{e}");
    let secret = "secret = \"sixteen-byte-secret\"";
    let e = Config::from_toml(&format!("[openim]\nenabled = true\n{secret}")).unwrap_err().to_string();
    assert!(e.contains("openim.admin_user_ids"), "{e}");
    let c = Config::from_toml(&format!("[openim]\nenabled = true\n{secret}\nadmin_user_ids = [\"boss\"]")).unwrap();
    assert_eq!(c.openim.addr, "0.0.0.0:10000");
    assert!(c.ignored_settings().is_empty());
    // Configured while the dialect is off: it loads, with a warning to show.
    let off = Config::from_toml(&format!("[openim]\n{secret}")).unwrap();
    assert_eq!(off.ignored_settings(), ["openim.secret is set but openim.enabled is false: the OpenIM dialect is off"]);
}

#[test]
fn easemob_secrets_must_be_long_and_token_lifetimes_bounded() {
    let app = |secret: &str| {
        format!("[easemob]\napps = [{{ org = \"o\", app = \"a\", client_id = \"id\", client_secret = \"{secret}\" }}]")
    };
    let e = Config::from_toml(&app("fifteen-bytes!!")).unwrap_err().to_string();
    assert!(e.contains("client_secret must be at least 16 bytes"), "{e}");
    Config::from_toml(&app("sixteen-bytes!!!")).unwrap();
    let long = format!("{}\ntoken_ttl_secs = 100\nmax_token_ttl_secs = 50", app("sixteen-bytes!!!"));
    let e = Config::from_toml(&long).unwrap_err().to_string();
    assert!(e.contains("easemob.max_token_ttl_secs"), "{e}");
}

#[test]
fn webhook_and_datasource_settings_are_checked() {
    let c = Config::from_toml("[webhook]\nurl = \"http://127.0.0.1:9/hook\"\nevents = [\"msg.offline\"]").unwrap();
    assert!(c.webhook.sends("msg.offline") && !c.webhook.sends("msg.notify"));
    assert!(Config::default().webhook.sends("msg.notify"), "empty means all");
    for (bad, key) in [
        ("[webhook]\nurl = \"ftp://x\"", "webhook.url"),
        ("[webhook]\nevents = [\"msg.sent\"]", "webhook.events"),
        ("[webhook]\noffline_rule = \"never\"", "webhook.offline_rule"),
        ("[webhook]\nbatch_max = 0", "webhook.batch_max"),
        ("[webhook]\nretry_max_ms = 1", "webhook.retry_max_ms"),
        ("[datasource]\nurl = \"localhost:9\"", "datasource.url"),
    ] {
        let e = Config::from_toml(bad).unwrap_err().to_string();
        assert!(e.contains(key), "{bad}: {e}");
    }
}

#[test]
fn retention_is_per_channel_type() {
    let c = Config::from_toml("[storage.retention_days]\n1 = 365\n2 = 30").unwrap();
    c.validate().unwrap();
    let day = 86_400;
    assert_eq!(
        c.storage.retention(),
        [(1, std::time::Duration::from_secs(365 * day)), (2, std::time::Duration::from_secs(30 * day))]
    );
    for bad in
        ["[storage.retention_days]\n13 = 1", "[storage.retention_days]\nx = 1", "[storage.retention_days]\n2 = 0"]
    {
        let e = Config::from_toml(bad).unwrap_err().to_string();
        assert!(e.contains("storage.retention_days."), "{e}");
    }
}

#[test]
fn the_demo_is_on_by_default_on_loopback_only() {
    let c = Config::load(None, empty_env(), Overrides::default()).unwrap();
    assert_eq!(c.demo_addr().unwrap(), Some("127.0.0.1:5172".parse().unwrap()));
    let off = Config::from_toml("[demo]\naddr = \"\"").unwrap();
    assert_eq!(off.demo_addr().unwrap(), None);
    let no_ws = Config::from_toml("[gateway]\nws_addr = \"\"").unwrap();
    assert_eq!(no_ws.demo_addr().unwrap(), None, "no WebSocket listener, no default demo");
    let e = Config::from_toml("[demo]\naddr = \"0.0.0.0:5172\"").unwrap_err().to_string();
    assert!(e.contains("demo.addr") && e.contains("loopback"), "{e}");
    let e = Config::from_toml("[demo]\naddr = \"127.0.0.1:5172\"\n[gateway]\nws_addr = \"\"").unwrap_err();
    assert!(e.to_string().contains("gateway.ws_addr"), "{e}");
    let clustered = "[storage]\nbackend = \"postgres\"\npostgres_url = \"postgres://h@127.0.0.1/h\"\n\
                     [cluster]\nnats_url = \"nats://127.0.0.1:4222\"\n";
    assert_eq!(Config::from_toml(clustered).unwrap().demo_addr().unwrap(), None, "off on a cluster member");
}

#[test]
fn the_example_config_parses() {
    let text = include_str!("../../../../config/hongyan.example.toml");
    let c = Config::from_toml(text).unwrap();
    assert_eq!(c.node_id, 1001);
    assert_eq!(c.gateway.idle_timeout_secs, 180);
}

#[test]
fn a_cluster_needs_postgres_and_a_sane_lease() {
    let e = Config::from_toml("[cluster]\nnats_url = \"nats://127.0.0.1:4222\"").unwrap_err().to_string();
    assert!(e.contains("cluster.nats_url") && e.contains("postgres"), "{e}");
    let on_postgres = "[storage]\nbackend = \"postgres\"\npostgres_url = \"postgres://h@127.0.0.1/h\"\n\
                       [cluster]\nnats_url = \"nats://127.0.0.1:4222\"\n";
    let c = Config::from_toml(on_postgres).unwrap();
    assert!(c.clustered());
    assert_eq!(c.cluster.lease_ms, 4000);
    let e = Config::from_toml(&format!("{on_postgres}lease_ms = 100")).unwrap_err().to_string();
    assert_eq!(e, "configuration: cluster.lease_ms: must be between 1000 and 60000");
    assert!(!Config::default().clustered());
}
