//! Security and hardening settings shared by the frontend's interfaces and the workers:
//! optional bearer-token authentication, request-size and read-time limits, and confinement of
//! file paths to a configured directory.
//!
//! # Authentication
//! With a token configured ([`AuthToken`]; `--auth-token-file PATH` or the environment variable
//! `PARM_AUTH_TOKEN`), every client call must carry it: HTTP `Authorization: Bearer TOKEN`,
//! gRPC metadata `authorization: Bearer TOKEN`; otherwise 401 (with `WWW-Authenticate: Bearer`)
//! / `UNAUTHENTICATED`. Comparison is constant-time in the token's content.
//!
//! Left open, so that orchestrators' probes work without credentials (as Kubernetes probes
//! against Triton / KServe do): HTTP `GET /v2/health/live` and `GET /v2/health/ready`, and the
//! gRPC `grpc.health.v1.Health` service. Everything else needs the token, including metadata,
//! model readiness, config, statistics, `/metrics` (Prometheus sends it with
//! `authorization: {credentials_file: ...}`), and the gRPC `ServerLive` / `ServerReady` calls.
//!
//! The instance interface uses the same scheme: a worker started with a token rejects calls
//! without it (`UNAUTHENTICATED`), and a frontend's instance clients send the token of its
//! [`crate::upstream::client::ClientOptions`] (`FrontendConfig::upstream`).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// Environment variable holding the bearer token when no token file is given.
pub const TOKEN_ENV: &str = "PARM_AUTH_TOKEN";

/// Default largest HTTP request body, after decompression (bytes): 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Default time a client has to send a request's headers.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a client has to send a request's whole body, once its headers are in.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A shared secret clients present as `Bearer TOKEN`.
#[derive(Clone)]
pub struct AuthToken(Arc<[u8]>);

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

impl AuthToken {
    /// A token from its text (surrounding whitespace, e.g. a file's trailing newline, removed).
    ///
    /// Errors: an empty token, or one with characters that cannot travel in an HTTP header
    /// (anything but visible ASCII).
    pub fn new(text: &str) -> anyhow::Result<Self> {
        let t = text.trim();
        anyhow::ensure!(!t.is_empty(), "the auth token is empty");
        anyhow::ensure!(t.bytes().all(|b| b.is_ascii_graphic()), "the auth token must be visible ASCII without spaces");
        Ok(Self(Arc::from(t.as_bytes())))
    }

    /// Reads the token from `path`.
    ///
    /// Errors: the file cannot be read, or its content is not a valid token.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading auth token file {}", path.display()))?;
        Self::new(&text).with_context(|| format!("in {}", path.display()))
    }

    /// The token from `file` if given, else from `$PARM_AUTH_TOKEN` if set, else none.
    ///
    /// Errors: those of [`Self::from_file`], or an invalid token in the variable.
    pub fn resolve(file: Option<&Path>) -> anyhow::Result<Option<Self>> {
        if let Some(path) = file {
            return Self::from_file(path).map(Some);
        }
        match std::env::var(TOKEN_ENV) {
            Ok(v) => Self::new(&v).with_context(|| format!("in ${TOKEN_ENV}")).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The header value clients send: `Bearer TOKEN`.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", String::from_utf8_lossy(&self.0))
    }

    /// Whether an `Authorization` header value carries this token (`Bearer TOKEN`, the
    /// scheme case-insensitive). Constant-time in the token's bytes.
    pub fn check_header(&self, value: Option<&[u8]>) -> bool {
        let Some(v) = value else { return false };
        let Some((scheme, rest)) = v.split_first_chunk::<7>() else { return false };
        if !scheme.eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        constant_time_eq(rest.trim_ascii(), &self.0)
    }
}

/// Equality of two byte strings whose running time does not depend on where they differ
/// (it does depend on the length of `b`, the secret's, which is not secret enough to matter).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for (i, &y) in b.iter().enumerate() {
        let x = a.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// A tonic interceptor checking the `authorization` metadata against `token` (none: every
/// call passes): `UNAUTHENTICATED` without the right `Bearer TOKEN`.
pub fn grpc_auth(token: Option<AuthToken>) -> GrpcAuth {
    GrpcAuth(token)
}

/// See [`grpc_auth`].
#[derive(Clone, Debug)]
pub struct GrpcAuth(Option<AuthToken>);

impl tonic::service::Interceptor for GrpcAuth {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &self.0 {
            Some(t) if !t.check_header(req.metadata().get("authorization").map(|v| v.as_bytes())) => {
                Err(tonic::Status::unauthenticated("missing or invalid bearer token (send metadata authorization: Bearer TOKEN)"))
            }
            _ => Ok(req),
        }
    }
}

/// Adds `authorization: Bearer TOKEN` to an outgoing gRPC request when `token` is set.
pub fn authorize<T>(req: &mut tonic::Request<T>, token: Option<&AuthToken>) {
    if let Some(t) = token
        && let Ok(v) = t.header_value().parse()
    {
        req.metadata_mut().insert("authorization", v);
    }
}

/// Limits and credentials of the frontend's client interfaces.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Bearer token clients must present (none: no authentication).
    pub auth: Option<AuthToken>,
    /// Largest HTTP request body, after gzip / deflate decompression (bytes); larger gets 413.
    pub max_body_bytes: usize,
    /// A client that has not sent its request headers within this is disconnected.
    pub header_read_timeout: Duration,
    /// A client that has not sent the whole body within this of its headers gets 408.
    pub body_read_timeout: Duration,
    /// TLS on every client-facing listener (HTTP, gRPC, metrics); none: plain text.
    pub tls: Option<crate::oip::tls::TlsFiles>,
    /// Most connections and idle timeout, per listener ([`crate::server::conn`]).
    pub conn: crate::server::conn::ConnLimits,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            auth: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            tls: None,
            conn: Default::default(),
        }
    }
}

/// `path` resolved inside `root`: a relative path is taken relative to `root`; after
/// resolving `..` and symbolic links (the file must exist) the result must still lie inside
/// `root`. Returns the canonical path.
///
/// Errors: `root` or `path` does not exist, or `path` leads outside `root` (`..`, an absolute
/// path elsewhere, or a symbolic link pointing out).
pub fn confine(root: &Path, path: &Path) -> anyhow::Result<PathBuf> {
    let root_c = root.canonicalize().with_context(|| format!("directory {}", root.display()))?;
    let joined = if path.is_absolute() { path.to_path_buf() } else { root.join(path) };
    let full = joined.canonicalize().with_context(|| format!("{}", joined.display()))?;
    anyhow::ensure!(
        full.starts_with(&root_c),
        "{} is outside the allowed directory {} (resolves to {})",
        path.display(),
        root_c.display(),
        full.display()
    );
    Ok(full)
}

/// Checks that `name` is one plain path component (no separators, `..`, or absolute path),
/// fit to be joined onto a configured directory.
///
/// Errors: anything else, naming `what`.
pub fn plain_name(name: &str, what: &str) -> anyhow::Result<()> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) if !name.contains(['/', '\\']) => Ok(()),
        _ => anyhow::bail!("{what} {name:?} must be a plain name (no '/', '..' or absolute path)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked() {
        let t = AuthToken::new("s3cret-token\n").unwrap();
        assert!(t.check_header(Some(b"Bearer s3cret-token")));
        assert!(t.check_header(Some(b"bearer s3cret-token")));
        for bad in [&b"Bearer s3cret-toke"[..], b"Bearer s3cret-token2", b"Basic s3cret-token", b"s3cret-token", b"Bearer ", b""] {
            assert!(!t.check_header(Some(bad)), "{}", String::from_utf8_lossy(bad));
        }
        assert!(!t.check_header(None));
        assert_eq!(t.header_value(), "Bearer s3cret-token");
        assert!(AuthToken::new("  \n").is_err());
        assert!(AuthToken::new("two words").is_err());
        assert!(format!("{t:?}").contains("redacted"));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn paths_are_confined() {
        let dir = std::env::temp_dir().join(format!("parm-confine-{}", std::process::id()));
        let root = dir.join("models");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/m.bpk"), b"x").unwrap();
        std::fs::write(dir.join("secret"), b"x").unwrap();
        assert!(confine(&root, Path::new("sub/m.bpk")).is_ok());
        assert!(confine(&root, &root.join("sub/m.bpk")).is_ok());
        assert!(confine(&root, Path::new("sub/../sub/m.bpk")).is_ok());
        assert!(confine(&root, Path::new("../secret")).is_err());
        assert!(confine(&root, &dir.join("secret")).is_err());
        assert!(confine(&root, Path::new("missing.bpk")).is_err());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.join("secret"), root.join("link")).unwrap();
            let e = confine(&root, Path::new("link")).unwrap_err();
            assert!(format!("{e:#}").contains("outside"), "{e:#}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
        for ok in ["fashion-mnist", "deployed.bpk"] {
            assert!(plain_name(ok, "x").is_ok(), "{ok}");
        }
        for bad in ["", "..", ".", "a/b", "/etc", "a\\b"] {
            assert!(plain_name(bad, "x").is_err(), "{bad}");
        }
    }
}
