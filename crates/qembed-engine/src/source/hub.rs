//! Fetching one file of a hub repo: from the cache when it is there, otherwise through
//! hf-hub's sync API, with progress, a size check and errors that name the file.
//!
//! Resume comes from hf-hub 0.4.3 itself: it downloads into `blobs/<etag>.part`,
//! keeps that file when a transfer fails, and the next attempt (a retry in the same
//! run, or the next run) opens it for append and asks for `Range: bytes=<len>-`.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiError, ApiRepo};
use hf_hub::{Cache, Repo};

use super::progress::{ProgressMode, Reporter, Tracker};

/// Why a file could not be had.
pub(crate) enum Miss {
    /// The hub has no such file (HTTP 404), or it is not cached and we are offline.
    Absent(String),
    /// Anything else: network, HTTP status, I/O, a size that does not match.
    Failed(String),
}

impl Miss {
    pub(crate) fn message(self) -> String {
        match self {
            Miss::Absent(m) | Miss::Failed(m) => m,
        }
    }
}

/// One repo at one revision, in one cache, maybe with a way to the hub.
pub(crate) struct Fetcher {
    pub(crate) id: String,
    pub(crate) repo: Repo,
    pub(crate) cache: Cache,
    pub(crate) endpoint: String,
    /// `None` when offline.
    pub(crate) api: Option<ApiRepo>,
    pub(crate) progress: ProgressMode,
}

impl Fetcher {
    fn revision(&self) -> &str {
        self.repo.revision()
    }

    fn repo_dir(&self) -> PathBuf {
        self.cache.path().join(self.repo.folder_name())
    }

    /// The commit the revision resolved to when it was last downloaded.
    fn cached_commit(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.repo_dir().join("refs").join(self.revision()));
        text.ok()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
    }

    /// Where the Python hub client records "this commit has no such file"; we write
    /// and read the same marker so that optional files are not asked for every run.
    fn no_exist_marker(&self, file: &str) -> Option<PathBuf> {
        let commit = self.cached_commit()?;
        Some(self.repo_dir().join(".no_exist").join(commit).join(file))
    }

    /// The file's local path, downloading it when it is not cached.
    pub(crate) fn fetch(&self, file: &str) -> Result<PathBuf, Miss> {
        if let Some(p) = self.cache.repo(self.repo.clone()).get(file) {
            return Ok(p);
        }
        let absent = || {
            format!(
                "`{file}` is not in repo `{}` at revision `{}`",
                self.id,
                self.revision()
            )
        };
        if self.no_exist_marker(file).is_some_and(|m| m.exists()) {
            return Err(Miss::Absent(format!("{} (cached answer)", absent())));
        }
        let Some(api) = &self.api else {
            return Err(Miss::Absent(format!(
                "`{file}` of `{}` is not in the cache and HF_HUB_OFFLINE is set",
                self.id
            )));
        };
        let mut reporter = Reporter::new(self.progress, file);
        // hf-hub unwraps a few things a server controls (a redirect without Location);
        // a bad server must give an error, not bring the process down.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            api.download_with_progress(file, Tracker(&mut reporter))
        }));
        let path = match outcome {
            Ok(Ok(path)) => path,
            Ok(Err(e)) => return Err(self.explain(file, e, &reporter, absent)),
            Err(_) => {
                return Err(Miss::Failed(format!(
                    "`{file}` of `{}`: hf-hub panicked on the server's answer",
                    self.id
                )))
            }
        };
        self.verify_size(file, &path, &reporter)?;
        Ok(path)
    }

    /// Records that `file` is not on the hub at the cached commit (best effort).
    fn remember_absent(&self, file: &str) {
        if let Some(marker) = self.no_exist_marker(file) {
            let made = marker
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&marker, b""));
            if let Err(e) = made {
                tracing::debug!("cannot record that {file} is absent: {e}");
            }
        }
    }

    fn explain(
        &self,
        file: &str,
        e: ApiError,
        reporter: &Reporter,
        absent: impl Fn() -> String,
    ) -> Miss {
        let url = format!(
            "{}/{}/resolve/{}/{file}",
            self.endpoint,
            self.repo.url(),
            self.repo.url_revision()
        );
        let e = match e {
            ApiError::TooManyRetries(inner) => *inner,
            e => e,
        };
        match e {
            ApiError::RequestError(err) => match *err {
                ureq::Error::Status(404, _) => {
                    self.remember_absent(file);
                    Miss::Absent(format!("{} (HTTP 404 from {url})", absent()))
                }
                ureq::Error::Status(code @ (401 | 403), _) => Miss::Failed(format!(
                    "`{file}` of `{}`: HTTP {code} from {url}; the repo may not exist, or be gated or \
                     private: set HF_TOKEN or log in with `huggingface-cli login`",
                    self.id
                )),
                ureq::Error::Status(code, _) => {
                    Miss::Failed(format!("`{file}` of `{}`: HTTP {code} from {url}", self.id))
                }
                // Its text names the URL.
                ureq::Error::Transport(t) => {
                    Miss::Failed(format!("`{file}` of `{}`: {t}", self.id))
                }
            },
            // An I/O error while bytes were still owed: the transfer broke off.
            ApiError::IoError(io)
                if reporter
                    .announced()
                    .is_some_and(|total| reporter.done() < total) =>
            {
                Miss::Failed(format!(
                    "download of `{file}` of `{}` stopped at {} of {} bytes: {io}; the \
                     partial file is kept in the cache and the next attempt resumes it",
                    self.id,
                    reporter.done(),
                    reporter.announced().unwrap_or_default()
                ))
            }
            ApiError::InvalidResume => Miss::Failed(format!(
                "`{file}` of `{}`: the partial download in {} is larger than the file \
                 on the hub; delete the `.part` file there and run again",
                self.id,
                self.repo_dir().join("blobs").display()
            )),
            other => Miss::Failed(format!("`{file}` of `{}`: {other}", self.id)),
        }
    }

    /// A file whose size is not the one the hub announced is removed from the cache
    /// (snapshot link and blob), so that no later run takes it for a good copy.
    fn verify_size(&self, file: &str, path: &Path, reporter: &Reporter) -> Result<(), Miss> {
        let Some(announced) = reporter.announced() else {
            return Ok(());
        };
        let got = std::fs::metadata(path)
            .map_err(|e| Miss::Failed(format!("`{file}`: cannot stat {}: {e}", path.display())))?
            .len();
        if got == announced {
            return Ok(());
        }
        let blob = std::fs::canonicalize(path).ok();
        let _ = std::fs::remove_file(path);
        if let Some(blob) = blob.filter(|b| b != path) {
            let _ = std::fs::remove_file(blob);
        }
        Err(Miss::Failed(format!(
            "`{file}` of `{}` arrived with {got} bytes but the hub announced {announced}; \
             removed it from the cache (run again to download it afresh)",
            self.id
        )))
    }
}
