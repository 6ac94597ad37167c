//! Finding a model: a directory, or a Hugging Face repo id resolved offline from the local HF cache
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; snapshot from `refs/main`).

use std::path::{Path, PathBuf};

use super::ModelError;

fn hub_cache() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(home).join("hub"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// The directory holding `config.json` for `name`: the path itself if it is a directory, else a cached
/// snapshot of the repo `org/name`.
pub fn resolve(name: &str) -> Result<PathBuf, ModelError> {
    let path = Path::new(name);
    if path.is_dir() {
        return Ok(path.to_owned());
    }
    let not_found = |message: String| ModelError::NotFound { name: name.to_owned(), message };
    let looks_like_repo = name.split('/').count() == 2 && !name.starts_with('.') && !name.starts_with('/');
    if !looks_like_repo {
        return Err(not_found("no such directory".to_owned()));
    }
    let cache = hub_cache().ok_or_else(|| not_found("no Hugging Face cache directory (set HF_HOME)".to_owned()))?;
    let repo = cache.join(format!("models--{}", name.replace('/', "--")));
    if !repo.is_dir() {
        return Err(not_found(format!("not a directory, and not in the Hugging Face cache at {}", cache.display())));
    }
    let snapshots = repo.join("snapshots");
    if let Ok(revision) = std::fs::read_to_string(repo.join("refs/main")) {
        let snapshot = snapshots.join(revision.trim());
        if snapshot.is_dir() {
            return Ok(snapshot);
        }
    }
    // No refs/main (a snapshot fetched by revision): accept exactly one snapshot.
    let found: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(not_found(format!("{} has no snapshot", repo.display()))),
        _ => Err(not_found(format!("{} has several snapshots and no refs/main; pass the snapshot directory", repo.display()))),
    }
}
