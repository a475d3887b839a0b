//! `--redis redis://[user:password@]host:port[/db]`.

use std::fmt;

/// Where Redis is and how to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

/// Shows where Redis is, never the password.
impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "redis://{host}:{}/{}", self.port, self.db)
    }
}

/// Parses a `redis://` URL (the port defaults to 6379, the database to 0; user and password
/// may be percent-encoded).
pub fn parse_redis_url(text: &str) -> Result<RedisUrl, String> {
    let bad = |why: &str| {
        format!("invalid Redis URL (want redis://[user:password@]host:port[/db]): {why}")
    };
    let rest = text
        .strip_prefix("redis://")
        .ok_or_else(|| bad("it must start with redis://"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (login, address) = match authority.rsplit_once('@') {
        Some((login, address)) => (Some(login), address),
        None => (None, authority),
    };
    let (username, password) = match login {
        None => (None, None),
        Some(login) => {
            let (user, password) = login.split_once(':').unwrap_or(("", login));
            let user = percent_decode(user).ok_or_else(|| bad("bad percent-encoding"))?;
            let password = percent_decode(password).ok_or_else(|| bad("bad percent-encoding"))?;
            ((!user.is_empty()).then_some(user), Some(password))
        }
    };
    let (host, port) = if let Some(v6) = address.strip_prefix('[') {
        let (host, rest) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (host, rest.strip_prefix(':'))
    } else {
        match address.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(port) => port.parse().map_err(|_| bad("bad port"))?,
        None => 6379,
    };
    let db = match path {
        "" => 0,
        db => db
            .parse()
            .map_err(|_| bad("the database must be a number"))?,
    };
    Ok(RedisUrl {
        host: host.to_owned(),
        port,
        username,
        password,
        db,
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_and_without_login_port_and_db() {
        let url = parse_redis_url("redis://127.0.0.1:6380").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.db),
            ("127.0.0.1", 6380, 0)
        );
        assert_eq!((url.username, url.password), (None, None));
        let url = parse_redis_url("redis://app:p%40ss@cache.internal/2").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.db),
            ("cache.internal", 6379, 2)
        );
        assert_eq!(url.username.as_deref(), Some("app"));
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        let url = parse_redis_url("redis://:secret@[::1]:7000").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 7000));
        assert_eq!(
            (url.username.as_deref(), url.password.as_deref()),
            (None, Some("secret"))
        );
        assert_eq!(url.to_string(), "redis://[::1]:7000/0");
        assert!(!format!("{url:?}").contains("secret"));
    }

    #[test]
    fn bad_urls_say_why() {
        for text in [
            "http://x",
            "redis://",
            "redis://h:port",
            "redis://h/db",
            "redis://%zz@h",
        ] {
            let err = parse_redis_url(text).unwrap_err();
            assert!(err.contains("invalid Redis URL"), "{text}: {err}");
        }
    }
}
