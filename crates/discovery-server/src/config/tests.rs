use super::*;

/// The Go original's `cmd/discovery/discovery-example.toml`.
const GO_SAMPLE: &str = include_str!("../../../../configs/discovery-example.toml");

#[test]
fn go_sample_loads_unchanged() {
    let (cfg, warnings) = Config::parse(GO_SAMPLE).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(cfg.env.zone, "sh001");
    assert_eq!(cfg.env.host, "test1");
    assert_eq!(cfg.env.deploy_env, "dev");
    assert_eq!(cfg.http_server.addr, "127.0.0.1:7171");
    assert_eq!(cfg.http_server.timeout, Duration::from_secs(40));
    assert_eq!(cfg.nodes, ["127.0.0.1:7171"]);
}

/// Every shipped config loads without a warning.
#[test]
fn shipped_configs_load_cleanly() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs"),
        &mut files,
    );
    assert!(files.len() >= 8, "{files:?}");
    for f in files {
        let (_, warnings) = Config::load(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(warnings.is_empty(), "{}: {warnings:?}", f.display());
    }
}

#[test]
fn embedded_default_is_a_lone_node() {
    let cfg = Config::default();
    assert_eq!(cfg.http_server.addr, "127.0.0.1:7171");
    assert_eq!(cfg.registry.params, RegistryParams::default());
    assert_eq!(cfg.registry.poll_hold, Duration::from_secs(30));
}

#[test]
fn keys_are_case_insensitive_and_unknown_keys_warn() {
    let (cfg, warnings) = Config::parse(
        "NODES = [\"a:1\"]\nbogus = 1\n[ENV]\ndeployENV = \"uat\"\n[zones]\nSH002 = [\"b:2\"]\n",
    )
    .unwrap();
    assert_eq!(cfg.env.deploy_env, "uat");
    assert_eq!(cfg.nodes, ["a:1"]);
    assert_eq!(cfg.zones["SH002"], ["b:2"]);
    assert_eq!(warnings, ["unknown config key `bogus` ignored"]);
}

#[test]
fn read_deadline_is_read_timeout_or_else_timeout() {
    let (c, _) = Config::parse("[httpServer]\ntimeout = \"40s\"\nreadTimeout = \"2s\"\n").unwrap();
    assert_eq!(c.http_server.read_deadline(), Duration::from_secs(2));
    for text in [
        "timeout = \"7s\"\n",
        "timeout = \"7s\"\nreadTimeout = \"0s\"\n",
    ] {
        let (c, _) = Config::parse(&format!("[httpServer]\n{text}")).unwrap();
        assert_eq!(c.http_server.read_deadline(), Duration::from_secs(7));
    }
    assert_eq!(Config::default().limits.max_connections, 50_000);
    let err = Config::parse("[limits]\nmax_connections = 0\n").unwrap_err();
    assert!(err.to_string().contains("limits.max_connections"), "{err}");
}

#[test]
fn zero_timeout_refuses_naming_the_key() {
    let err = Config::parse("[httpServer]\ntimeout = \"0s\"\n").unwrap_err();
    assert!(err.to_string().contains("httpServer.timeout"), "{err}");
    let err = Config::parse("[registry]\nrenew_threshold = 1.5\n").unwrap_err();
    assert!(
        err.to_string().contains("registry.renew_threshold"),
        "{err}"
    );
    let err = Config::parse("[registry]\nlease = \"3 apples\"\n").unwrap_err();
    assert!(err.to_string().contains("lease"), "{err}");
}

#[test]
fn our_tables_parse() {
    let (cfg, _) = Config::parse(
        "[registry]\nlease = \"3s\"\nevict_interval = \"1s\"\nrenew_interval=\"500ms\"\npoll_hold=\"1s\"\nself_preservation=false\n[cluster]\nadvertise=\"10.0.0.1:7171\"\n[limits]\nmax_addrs=2\n",
    )
    .unwrap();
    assert_eq!(cfg.registry.params.renews_per_tick(), 2);
    assert!(!cfg.registry.params.self_preservation);
    assert_eq!(cfg.registry.poll_hold, Duration::from_secs(1));
    assert_eq!(cfg.cluster.advertise.as_deref(), Some("10.0.0.1:7171"));
    assert_eq!(cfg.limits.max_addrs, 2);
}

#[test]
fn empty_env_values_fall_back_to_flags_then_vars_then_defaults() {
    let mut cfg = Config::default();
    let flags = EnvFlags {
        zone: Some("flagzone".into()),
        ..Default::default()
    };
    cfg.fill_env(&flags, |k| match k {
        "ZONE" => Some("varzone".into()),
        "REGION" => Some("varregion".into()),
        "HOSTNAME" => Some("box1".into()),
        _ => None,
    });
    assert_eq!(cfg.env.zone, "flagzone");
    assert_eq!(cfg.env.region, "varregion");
    assert_eq!(cfg.env.deploy_env, "dev");
    assert_eq!(cfg.env.host, "box1");
}

#[test]
fn bad_scheduler_file_is_skipped_and_named() {
    let dir = std::env::temp_dir().join(format!("sched-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("a.json"),
        r#"{"app_id":"demo.svc","env":"dev","clients":{"sh001":{"zones":{"sh001":{"weight":3}}}},"remark":"r"}"#,
    )
    .unwrap();
    std::fs::write(dir.join("b.json"), "{nope").unwrap();
    std::fs::write(dir.join(".hidden.json"), "{nope").unwrap();
    std::fs::write(
        dir.join("c.json"),
        r#"{"app_id":"other","env":"dev","clients":[{"src":"sh001","dst":{"sh002":1}}]}"#,
    )
    .unwrap();
    let (s, errors) = load_schedulers(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(
        s[&AppKey::new("dev", "demo.svc")].weight("sh001", "sh001"),
        Some(3)
    );
    assert_eq!(s[&AppKey::new("dev", "demo.svc")].remark, "r");
    assert_eq!(
        s[&AppKey::new("dev", "other")].weight("sh001", "sh002"),
        Some(1)
    );
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("b.json"));
}

#[test]
fn tls_table_is_parsed_and_checked() {
    let (c, warnings) = Config::parse(
        "[httpServer]\nplainAddr = \"127.0.0.1:7172\"\n\
         [tls]\ncert = \"s.pem\"\nkey = \"s.key\"\nca = \"ca.pem\"\nclient_auth = \"Required\"\n",
    )
    .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(c.tls.enabled());
    assert_eq!(c.tls.client_auth, ClientAuth::Required);
    assert_eq!(c.tls.ca.as_deref(), Some(Path::new("ca.pem")));
    assert_eq!(c.http_server.plain_addr.as_deref(), Some("127.0.0.1:7172"));
    assert!(!Config::default().tls.enabled());

    let err = |text: &str| Config::parse(text).unwrap_err().to_string();
    assert!(err("[tls]\ncert = \"s.pem\"\nca = \"ca.pem\"\n").contains("tls.key"));
    assert!(err("[tls]\nkey = \"s.key\"\n").contains("tls.cert"));
    assert!(err("[tls]\ncert = \"s.pem\"\nkey = \"s.key\"\n").contains("tls.ca"));
    assert!(
        err("[tls]\ncert = \"s\"\nkey = \"k\"\nca = \"c\"\nclient_auth = \"sometimes\"\n")
            .contains("tls.client_auth")
    );
    assert!(err("[tls]\nclient_auth = \"required\"\n").contains("tls.cert"));
    assert!(err("[httpServer]\nplainAddr = \"127.0.0.1:1\"\n").contains("httpServer.plainAddr"));
}
