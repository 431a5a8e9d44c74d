//! Target parsing and scheme lookup.

use std::sync::Arc;

use discovery_tonic::{Resolvers, Target};
use naming::{BuildOptions, Builder, Error, Resolver};

fn parse(s: &str) -> Target {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn invalid(s: &str) -> String {
    match Target::parse(s) {
        Err(Error::InvalidTarget { target, reason }) => {
            assert_eq!(target, s);
            reason
        }
        other => panic!("{s}: expected InvalidTarget, got {other:?}"),
    }
}

#[test]
fn full_discovery_target() {
    let t = parse(
        "discovery://default/demo.service?subset=10&cluster=a&cluster=b&zone=sh002&zone=x&other=1",
    );
    assert_eq!(t.scheme, "discovery");
    assert_eq!(t.authority, "default");
    assert_eq!(t.endpoint, "demo.service");
    assert_eq!(t.clusters, ["a", "b"]);
    assert_eq!(t.zone.as_deref(), Some("sh002"), "first zone wins");
    assert_eq!(t.subset, Some(10));
    let o = t.build_options();
    assert_eq!(
        o,
        BuildOptions {
            scheme: "grpc".into(),
            clusters: vec!["a".into(), "b".into()],
            client_zone: Some("sh002".into()),
            subset: 10,
        }
    );
}

#[test]
fn v2_empty_authority_equals_default() {
    let a = parse("discovery:///demo.service");
    let b = parse("discovery://default/demo.service");
    assert_eq!(a.authority, "");
    assert_eq!(a.build_options(), b.build_options());
    assert_eq!(a.endpoint, b.endpoint);
    assert_eq!(
        parse("discovery:///demo.service?zone=sh002")
            .build_options()
            .client_zone
            .as_deref(),
        Some("sh002")
    );
}

#[test]
fn subset_defaults_zero_disables_and_garbage_is_rejected() {
    assert_eq!(parse("discovery://default/a").build_options().subset, 50);
    assert_eq!(
        parse("discovery://default/a?subset=0")
            .build_options()
            .subset,
        0
    );
    let reason = invalid("discovery://default/a?subset=abc");
    assert!(reason.contains("abc"), "{reason}");
    invalid("discovery://default/a?subset=-1");
}

#[test]
fn cluster_key_is_singular() {
    // `clusters=` filters nothing.
    assert!(
        parse("discovery://default/a?clusters=a")
            .clusters
            .is_empty()
    );
    assert_eq!(
        parse("discovery://default/a?cluster=a&cluster=b&cluster=a").clusters,
        ["a", "b"]
    );
}

#[test]
fn malformed_targets() {
    invalid("demo.service");
    invalid("://default/demo.service");
    invalid("discovery://default");
    invalid("discovery://default/");
    invalid("disc overy://default/a");
}

#[test]
fn config_defaults_are_added_without_overriding() {
    let t = parse("discovery://default/a?zone=sh002&cluster=x").with_defaults(
        &["c1".into()],
        Some("sh001"),
        50,
    );
    assert_eq!(t.clusters, ["x", "c1"]);
    assert_eq!(t.zone.as_deref(), Some("sh002"));
    assert_eq!(t.subset, Some(50));
    let t = parse("discovery://default/a?subset=0").with_defaults(&[], Some("sh001"), 50);
    assert_eq!(t.subset, Some(0));
    assert_eq!(t.zone.as_deref(), Some("sh001"));
    assert_eq!(
        t.to_string(),
        "discovery://default/a?zone=sh001&subset=0",
        "display round-trips"
    );
    assert_eq!(parse(&t.to_string()), t);
}

#[test]
fn direct_resolves_without_a_registry_and_unknown_schemes_fail() {
    let resolvers = Resolvers::new();
    let r = resolvers
        .build(&parse(
            "direct://default/127.0.0.1:9000, 127.0.0.1:9091,127.0.0.1:9000",
        ))
        .unwrap();
    let info = r.fetch().expect("an immediate snapshot");
    let ins: Vec<_> = info.iter().collect();
    assert_eq!(ins.len(), 2, "duplicates merged");
    assert_eq!(ins[0].grpc_addr(), Some("127.0.0.1:9000"));
    assert_eq!(ins[1].weight(), 10);
    assert_eq!(ins[1].color(), None);

    assert!(resolvers.build(&parse("direct://default/nohost")).is_err());
    assert!(
        resolvers
            .build(&parse("direct://default/h:notaport"))
            .is_err()
    );
    let err = resolvers
        .build(&parse("discovery://default/demo.service"))
        .err()
        .expect("no discovery builder registered");
    assert!(err.to_string().contains("discovery"), "{err}");
}

#[test]
fn builders_are_looked_up_by_scheme() {
    struct Named;
    impl Builder for Named {
        fn scheme(&self) -> &str {
            "discovery"
        }
        fn build(&self, appid: &str, o: BuildOptions) -> Result<Box<dyn Resolver>, Error> {
            Err(Error::InvalidConfig(format!(
                "{appid} {:?} {}",
                o.clusters, o.subset
            )))
        }
    }
    let resolvers = Resolvers::new().with(Arc::new(Named));
    let err = resolvers
        .build(&parse(
            "discovery://default/demo.service?cluster=c&subset=7",
        ))
        .err()
        .unwrap();
    assert_eq!(err, Error::InvalidConfig("demo.service [\"c\"] 7".into()));
    assert!(resolvers.get("direct").is_some());
}
