//! Target strings: `discovery://default/<appid>?subset=50&cluster=a&zone=z` and
//! `direct://default/host:port,host:port`.
//!
//! Targets are parsed by hand because `http::Uri` rejects the empty authority
//! of the kratos v2 form `discovery:///<appid>`.
//!
//! ```
//! use discovery_tonic::Target;
//!
//! let t: Target = "discovery://default/demo.service?cluster=a&cluster=b&zone=sh002"
//!     .parse()
//!     .unwrap();
//! assert_eq!(t.scheme, "discovery");
//! assert_eq!(t.endpoint, "demo.service");
//! let opts = t.build_options();
//! assert_eq!(opts.clusters, ["a", "b"]);
//! assert_eq!(opts.client_zone.as_deref(), Some("sh002"));
//! assert_eq!(opts.subset, 50);
//!
//! assert!("discovery://default/demo.service?subset=abc".parse::<Target>().is_err());
//! ```

use std::{fmt, str::FromStr};

use naming::{BuildOptions, Error};

/// Subset size used when neither the target nor the client config sets one.
pub const DEFAULT_SUBSET: usize = 50;

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The scheme, which selects the resolver builder (`discovery`, `direct`).
    pub scheme: String,
    /// The authority; a placeholder (`default`) that may be empty.
    pub authority: String,
    /// The path without its leading `/`: the appid for `discovery`, the
    /// comma-separated `host:port` list for `direct`.
    pub endpoint: String,
    /// Every `cluster=` value, in order, without duplicates.
    pub clusters: Vec<String>,
    /// The first `zone=` value: overrides the client zone.
    pub zone: Option<String>,
    /// The first `subset=` value, when present.
    pub subset: Option<usize>,
}

impl Target {
    /// Parses a target, rejecting anything ambiguous with
    /// [`Error::InvalidTarget`].
    pub fn parse(text: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidTarget {
            target: text.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| invalid("expected <scheme>://<authority>/<endpoint>"))?;
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(invalid("bad scheme"));
        }
        let (authority, path_and_query) = rest
            .split_once('/')
            .ok_or_else(|| invalid("missing /<endpoint> after the authority"))?;
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        if path.is_empty() {
            return Err(invalid("empty endpoint (appid or address list)"));
        }
        let mut target = Target {
            scheme: scheme.to_ascii_lowercase(),
            authority: authority.to_string(),
            endpoint: path.to_string(),
            clusters: Vec::new(),
            zone: None,
            subset: None,
        };
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "cluster" if !value.is_empty() && !target.clusters.iter().any(|c| *c == value) => {
                    target.clusters.push(value.into_owned());
                }
                "zone" if target.zone.is_none() && !value.is_empty() => {
                    target.zone = Some(value.into_owned());
                }
                "subset" if target.subset.is_none() => {
                    let n = value.trim().parse::<usize>().map_err(|_| {
                        invalid(&format!(
                            "subset must be a non-negative integer, got {value:?}"
                        ))
                    })?;
                    target.subset = Some(n);
                }
                // Unknown keys (and `clusters`, which the original never read) are ignored.
                _ => {}
            }
        }
        Ok(target)
    }

    /// Adds the client configuration's defaults the way the original did:
    /// every configured cluster, the zone if the target has none, the subset
    /// if the target has none and `subset > 0`.
    pub fn with_defaults(mut self, clusters: &[String], zone: Option<&str>, subset: usize) -> Self {
        for c in clusters {
            if !c.is_empty() && !self.clusters.contains(c) {
                self.clusters.push(c.clone());
            }
        }
        if self.zone.is_none() {
            self.zone = zone.filter(|z| !z.is_empty()).map(str::to_string);
        }
        if self.subset.is_none() && subset > 0 {
            self.subset = Some(subset);
        }
        self
    }

    /// The options handed to the resolver builder: scheme `grpc`, the
    /// clusters, the zone and the subset (default [`DEFAULT_SUBSET`]).
    pub fn build_options(&self) -> BuildOptions {
        BuildOptions {
            scheme: "grpc".to_string(),
            clusters: self.clusters.clone(),
            client_zone: self.zone.clone(),
            subset: self.subset.unwrap_or(DEFAULT_SUBSET),
        }
    }
}

impl FromStr for Target {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Target::parse(s)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}/{}", self.scheme, self.authority, self.endpoint)?;
        let mut query = form_urlencoded::Serializer::new(String::new());
        for c in &self.clusters {
            query.append_pair("cluster", c);
        }
        if let Some(z) = &self.zone {
            query.append_pair("zone", z);
        }
        if let Some(n) = self.subset {
            query.append_pair("subset", &n.to_string());
        }
        let query = query.finish();
        if !query.is_empty() {
            write!(f, "?{query}")?;
        }
        Ok(())
    }
}
