//! The commands that work on a gateway's database directly: `kmsgw seal
//! rotate`, `kmsgw seal migrate`, `kmsgw backup` and `kmsgw restore`, on the
//! database and data directory a gateway's flags name. On SQLite, those that write refuse
//! to run beside a live gateway (`serve` holds the database's lock file);
//! on PostgreSQL they work beside running replicas.

use std::io::{BufReader, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::audit::{Action, Audit, Event};
use crate::catalog::Catalog;
use crate::config::{Config, SealConfig};
use crate::custody::backend::KEY_FILE;
use crate::custody::rotate::Pace;
use crate::custody::{Custody, KeySource, Seal};
use crate::server::{Hold, ServeOptions, database_url, hold_database, load_config, open_custody};

/// A catalog opened for a seal command, its custody, and the lock held.
struct Opened {
    config: Config,
    catalog: Catalog,
    custody: Arc<Custody>,
    _lock: Option<std::fs::File>,
}

async fn open(options: &ServeOptions, hold: Option<Hold>) -> Result<Opened, String> {
    let config = load_config(options).map_err(|e| e.to_string())?;
    let url = database_url(options, &config);
    let lock = match hold {
        Some(hold) => hold_database(&url, hold)?,
        None => None,
    };
    let catalog = Catalog::connect(&url)
        .await
        .map_err(|e| format!("cannot open the database: {e}"))?;
    let custody = open_custody(&config.seal, options, &catalog)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Opened {
        config,
        catalog,
        custody,
        _lock: lock,
    })
}

/// Appends a seal operation's record to the audit log, waits for it, and
/// counts the operation for `/metrics`.
async fn audit(opened: &Opened, action: Action, seal: String, outcome: &'static str) {
    opened.custody.count(action.as_str(), outcome).await;
    let log = Audit::start(&opened.config.audit, opened.catalog.clone());
    let event = Event {
        api_key: Some("cli".into()),
        tenant: None,
        action,
        kid: None,
        provider: Some(seal),
        outcome,
        message_sha256s: Vec::new(),
    };
    if let Err(e) = log.record_durably(event).await {
        eprintln!(
            "warning: the {} record could not be written: {e}",
            action.as_str()
        );
    }
    log.flush(Duration::from_secs(10)).await;
}

/// `kmsgw seal rotate`: a new master key generation, every sealed item
/// rewrapped (or an unfinished rotation finished), with a progress bar.
///
/// # Errors
/// A message for the operator.
pub async fn rotate(options: &ServeOptions, pace: Pace) -> Result<String, String> {
    let opened = open(options, Some(Hold::Exclusive)).await?;
    opened.custody.unseal().await.map_err(|e| e.to_string())?;
    let bar = crate::client::output::progress(Some(0), "items rewrapped");
    let result = opened
        .custody
        .rotate(true, pace, &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await;
    bar.finish_and_clear();
    let seal = opened.custody.seal.name();
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    audit(&opened, Action::SealRotate, seal, outcome).await;
    let done = result.map_err(|e| format!("{e} (run `kmsgw seal rotate` again to resume)"))?;
    Ok(format!(
        "master key rotated to generation {}: {} sealed items rewrapped in {:.1} s; older generations destroyed",
        done.generation,
        done.rewrapped,
        done.elapsed.as_secs_f64()
    ))
}

/// `kmsgw seal migrate --to FILE`: the master key's generations rewrapped by
/// the seal of another kms.json.
///
/// # Errors
/// A message for the operator; nothing changed.
pub async fn migrate(options: &ServeOptions, to: &Path) -> Result<String, String> {
    let target = Config::load(to, &crate::config::process_env).map_err(|e| e.to_string())?;
    let opened = open(options, Some(Hold::Exclusive)).await?;
    opened.custody.unseal().await.map_err(|e| e.to_string())?;
    let key_file = options.data_dir.join(KEY_FILE);
    let made_file = matches!(target.seal, SealConfig::File);
    if made_file && opened.custody.seal.as_file().is_some() {
        return Err(format!(
            "the master key is wrapped by seal `{}` already",
            opened.custody.seal.name()
        ));
    }
    let new_seal = Seal::open(&target.seal, KeySource::NewFile(&key_file))
        .await
        .map_err(|e| match made_file {
            true => format!(
                "{e} (a file seal writes a new {}; move the old one away)",
                key_file.display()
            ),
            false => e.to_string(),
        })?;
    let result = opened.custody.migrate(&new_seal).await;
    let names = format!("{} -> {}", opened.custody.seal.name(), new_seal.name());
    match result {
        Ok(done) => {
            audit(&opened, Action::SealMigrate, names, "ok").await;
            let mut message = format!(
                "master key generations {:?} moved from seal `{}` to `{}`",
                done.generations, done.from, done.to
            );
            match (&done.removed, opened.custody.seal.as_file()) {
                (Some(path), _) => message.push_str(&format!("; removed {}", path.display())),
                (None, Some(_)) => {
                    message.push_str("; unset KMSGW_MASTER_KEY, it opens nothing any more")
                }
                (None, None) => {}
            }
            message.push_str(&format!("; start the gateway with {}", to.display()));
            Ok(message)
        }
        Err(e) => {
            if made_file {
                let _ = std::fs::remove_file(&key_file);
            }
            audit(&opened, Action::SealMigrate, names, "failed").await;
            Err(format!("{e}; nothing changed"))
        }
    }
}

/// `kmsgw backup --out FILE`: a consistent encrypted snapshot of the whole
/// catalog, taken beside a live gateway.
///
/// # Errors
/// A message for the operator; no file is left behind.
pub async fn backup(options: &ServeOptions, out: &Path) -> Result<String, String> {
    let opened = open(options, None).await?;
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    if out.exists() {
        return Err(format!("{} exists; choose another file", out.display()));
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    let result = opened.custody.backup(&mut writer).await;
    let finished = result.map_err(|e| e.to_string()).and_then(|counts| {
        writer
            .flush()
            .and_then(|()| writer.get_ref().sync_all())
            .and_then(|()| std::fs::rename(&partial, out))
            .map(|()| counts)
            .map_err(|e| format!("cannot write {}: {e}", out.display()))
    });
    let seal = opened.custody.seal.name();
    match finished {
        Ok(counts) => {
            audit(&opened, Action::Backup, seal, "ok").await;
            Ok(format!(
                "backed up to {}: {}",
                out.display(),
                summary(&counts)
            ))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            audit(&opened, Action::Backup, seal, "failed").await;
            Err(e)
        }
    }
}

/// `kmsgw restore --from FILE`: a backup into an empty database, with the
/// backup's seal.
///
/// # Errors
/// A message for the operator; nothing was written.
pub async fn restore(options: &ServeOptions, from: &Path) -> Result<String, String> {
    let config = load_config(options).map_err(|e| e.to_string())?;
    let url = database_url(options, &config);
    std::fs::create_dir_all(&options.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", options.data_dir.display()))?;
    let _lock = hold_database(&url, Hold::Exclusive)?;
    let input =
        std::fs::File::open(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    // The seal is opened, never made: a file seal's key must be the backup's.
    let key_file = options.data_dir.join(KEY_FILE);
    let source = match &options.master_key {
        Some(text) => KeySource::Env(text),
        None => KeySource::File(&key_file),
    };
    let seal = Seal::open(&config.seal, source)
        .await
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&options.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", options.data_dir.display()))?;
    let catalog = Catalog::connect(&url)
        .await
        .map_err(|e| format!("cannot open the database: {e}"))?;
    let counts = crate::custody::backup::restore(&catalog, &seal, BufReader::new(input))
        .await
        .map_err(|e| format!("{e}; nothing was written"))?;
    let opened = Opened {
        config,
        catalog: catalog.clone(),
        custody: Custody::new(seal, catalog),
        _lock: None,
    };
    audit(&opened, Action::Restore, opened.custody.seal.name(), "ok").await;
    Ok(format!(
        "restored from {}: {}",
        from.display(),
        summary(&counts)
    ))
}

fn summary(counts: &crate::custody::backup::Counts) -> String {
    counts
        .iter()
        .map(|(table, n)| format!("{table} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
