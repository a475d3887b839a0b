//! The chat page's files: embedded in the binary, or read once from `--assets DIR` at start-up.
//!
//! Only files found when the table is built can ever be served, so a request path cannot escape
//! the folder, and the loop never touches the disk.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::path::Path;

/// Largest total size read from `--assets DIR`, so a wrong folder fails fast instead of filling memory.
const MAX_DIR_BYTES: u64 = 64 << 20;

/// Deepest folder nesting read from `--assets DIR`.
const MAX_DEPTH: usize = 8;

/// One servable file.
#[derive(Clone, Debug)]
pub struct Asset {
    /// The Content-Type header value, from the file's extension.
    pub content_type: &'static str,
    /// The file's bytes; borrowed from the binary for the embedded page.
    pub body: Cow<'static, [u8]>,
}

/// The servable files by name (`index.html`, `app.js`, `img/logo.svg`).
#[derive(Clone, Debug)]
pub struct Assets {
    /// Files keyed by their path relative to the asset root, with `/` separators.
    files: HashMap<String, Asset>,
}

impl Assets {
    /// The page compiled into the binary from `assets/`.
    pub fn embedded() -> Assets {
        let embedded: [(&str, &'static [u8]); 4] = [
            ("index.html", include_bytes!("../assets/index.html")),
            ("app.js", include_bytes!("../assets/app.js")),
            // The client library, also for other web apps: `import { connect } from '/assets/wshub.js'`.
            ("wshub.js", include_bytes!("../assets/wshub.js")),
            ("style.css", include_bytes!("../assets/style.css")),
        ];
        let files = embedded
            .into_iter()
            .map(|(name, body)| {
                (
                    name.to_owned(),
                    Asset {
                        content_type: content_type(name),
                        body: Cow::Borrowed(body),
                    },
                )
            })
            .collect();
        Assets { files }
    }

    /// Every regular file below `dir` (hidden names and symlinks skipped).
    pub fn from_dir(dir: &Path) -> io::Result<Assets> {
        let mut assets = Assets {
            files: HashMap::new(),
        };
        let mut total = 0;
        assets.read_dir(dir, "", 0, &mut total)?;
        if !assets.files.contains_key("index.html") {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} has no index.html", dir.display()),
            ));
        }
        Ok(assets)
    }

    fn read_dir(
        &mut self,
        dir: &Path,
        prefix: &str,
        depth: usize,
        total: &mut u64,
    ) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let kind = entry.file_type()?;
            let relative = format!("{prefix}{name}");
            if kind.is_dir() && depth < MAX_DEPTH {
                self.read_dir(&entry.path(), &format!("{relative}/"), depth + 1, total)?;
            } else if kind.is_file() {
                *total += entry.metadata()?.len();
                if *total > MAX_DIR_BYTES {
                    return Err(io::Error::other(format!(
                        "{} holds more than 64 MiB",
                        dir.display()
                    )));
                }
                let body = std::fs::read(entry.path())?;
                self.files.insert(
                    relative,
                    Asset {
                        content_type: content_type(&name),
                        body: Cow::Owned(body),
                    },
                );
            }
        }
        Ok(())
    }

    /// The file called `name` (relative, e.g. `app.js`).
    pub fn get(&self, name: &str) -> Option<&Asset> {
        self.files.get(name)
    }
}

fn content_type(name: &str) -> &'static str {
    match name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .as_deref()
    {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_page_has_its_four_files() {
        let assets = Assets::embedded();
        assert_eq!(
            assets.get("index.html").unwrap().content_type,
            "text/html; charset=utf-8"
        );
        assert_eq!(
            assets.get("app.js").unwrap().content_type,
            "text/javascript; charset=utf-8"
        );
        // A JavaScript MIME type: browsers refuse to run a module served as anything else.
        assert_eq!(
            assets.get("wshub.js").unwrap().content_type,
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            assets.get("style.css").unwrap().content_type,
            "text/css; charset=utf-8"
        );
        assert!(assets.get("../Cargo.toml").is_none());
    }

    #[test]
    fn a_folder_is_read_once_and_hidden_files_are_skipped() {
        let dir = std::env::temp_dir().join(format!("wshub-assets-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("img")).unwrap();
        std::fs::write(dir.join("index.html"), "<p>hi</p>").unwrap();
        std::fs::write(dir.join(".secret"), "no").unwrap();
        std::fs::write(dir.join("img/logo.svg"), "<svg/>").unwrap();
        let assets = Assets::from_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(&*assets.get("index.html").unwrap().body, b"<p>hi</p>");
        assert_eq!(
            assets.get("img/logo.svg").unwrap().content_type,
            "image/svg+xml"
        );
        assert!(assets.get(".secret").is_none());
    }

    #[test]
    fn a_folder_without_index_is_refused() {
        let dir = std::env::temp_dir().join(format!("wshub-assets-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let error = Assets::from_dir(&dir).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(error.to_string().contains("index.html"));
    }
}
