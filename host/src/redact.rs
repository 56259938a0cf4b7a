//! Keeping a provider entry's own secrets out of what its backend says: a
//! backend (or a guest) that echoes the token, client secret or PIN it was sent
//! must not get it into an answer, a health report or the log. Each provider
//! holds a [`Redactor`] with its entry's secrets and the tokens obtained with
//! them, and passes every backend text through [`Redactor::scrub`].

use std::sync::{Arc, RwLock};

use zeroize::Zeroizing;

/// What a removed secret is replaced with.
pub const REDACTED: &str = "[redacted]";
/// Secrets shorter than this are not looked for (they would match ordinary
/// words); configuration refuses none, so a 3-character PIN is still sent.
const MIN_SECRET: usize = 4;
/// Tokens obtained at run time that are remembered (the newest ones).
const MAX_OBTAINED: usize = 16;

#[derive(Default)]
struct Secrets {
    /// From the configuration: kept for the provider's life.
    fixed: Vec<Zeroizing<String>>,
    /// Obtained tokens, oldest first.
    obtained: Vec<Zeroizing<String>>,
}

/// The secrets of one provider entry (or of one set of credentials). Cheap to
/// clone; clones share the set.
#[derive(Clone)]
pub struct Redactor {
    /// Where this redactor adds secrets.
    own: Arc<RwLock<Secrets>>,
    /// Every set it scrubs with: its own and those it was joined with.
    all: Vec<Arc<RwLock<Secrets>>>,
}

impl Default for Redactor {
    fn default() -> Self {
        let own = Arc::<RwLock<Secrets>>::default();
        Redactor {
            all: vec![Arc::clone(&own)],
            own,
        }
    }
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor")
    }
}

/// The forms a secret may take in an echo: as sent, JSON-escaped, form- or
/// percent-encoded, and each line of a multi-line value (a PEM key).
fn forms(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_owned()];
    let json = serde_json::to_string(secret).unwrap_or_default();
    forms.push(json.trim_matches('"').to_owned());
    forms.push(url::form_urlencoded::byte_serialize(secret.as_bytes()).collect());
    forms.extend(secret.lines().map(|line| line.trim().to_owned()));
    forms.retain(|form| form.len() >= MIN_SECRET);
    forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
    forms.dedup();
    forms
}

impl Redactor {
    /// A redactor for `secrets` (empty ones are ignored).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let redactor = Redactor::default();
        for secret in secrets {
            redactor.add_fixed(secret);
        }
        redactor
    }

    /// This redactor also scrubbing with `others`' secrets (those of the
    /// credentials a provider holds), now and as they learn new tokens.
    pub fn joined<'a>(mut self, others: impl IntoIterator<Item = &'a Redactor>) -> Self {
        for other in others {
            for set in &other.all {
                if !self.all.iter().any(|known| Arc::ptr_eq(known, set)) {
                    self.all.push(Arc::clone(set));
                }
            }
        }
        self
    }

    /// Adds a configured secret.
    pub fn add_fixed(&self, secret: &str) {
        let mut set = self.own.write().expect("not poisoned");
        set.fixed
            .extend(forms(secret).into_iter().map(Zeroizing::new));
    }

    /// Remembers a token obtained at run time (the newest 16 are kept).
    pub fn add_obtained(&self, token: &str) {
        let mut set = self.own.write().expect("not poisoned");
        if set.obtained.iter().any(|known| known.as_str() == token) {
            return;
        }
        set.obtained
            .extend(forms(token).into_iter().map(Zeroizing::new));
        let excess = set.obtained.len().saturating_sub(MAX_OBTAINED * 4);
        set.obtained.drain(..excess);
    }

    /// `text` with every known secret replaced by [`REDACTED`].
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for set in &self.all {
            let set = set.read().expect("not poisoned");
            for secret in set.fixed.iter().chain(set.obtained.iter()) {
                if out.contains(secret.as_str()) {
                    out = out.replace(secret.as_str(), REDACTED);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_secrets_are_removed_in_every_form() {
        let redactor = Redactor::new(["s3cr3t/token+x", "", "abc"]);
        redactor.add_obtained("ya29.obtained");
        let echo = "token s3cr3t/token+x, form s3cr3t%2Ftoken%2Bx, bearer ya29.obtained, abc stays";
        let scrubbed = redactor.scrub(echo);
        assert_eq!(
            scrubbed,
            "token [redacted], form [redacted], bearer [redacted], abc stays"
        );
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n";
        let keyed = Redactor::new([pem]);
        assert!(
            !keyed
                .scrub("echo: MIIEvQIBADANBgkqhkiG9w0BAQEFAASC")
                .contains("MIIE")
        );
        assert!(
            !keyed
                .scrub(&serde_json::to_string(pem).unwrap())
                .contains("MIIE")
        );
    }

    #[test]
    fn a_joined_redactor_learns_the_tokens_its_parts_obtain() {
        let credentials = Redactor::new(["client-secret-1"]);
        let provider = Redactor::new(["vault-token-1"]).joined([&credentials]);
        credentials.add_obtained("later-token-1");
        assert_eq!(
            provider.scrub("vault-token-1 client-secret-1 later-token-1"),
            "[redacted] [redacted] [redacted]"
        );
    }

    #[test]
    fn only_the_newest_obtained_tokens_are_kept() {
        let redactor = Redactor::default();
        for i in 0..100 {
            redactor.add_obtained(&format!("token-number-{i:03}"));
        }
        assert!(redactor.scrub("token-number-099").contains(REDACTED));
        assert!(!redactor.scrub("token-number-000").contains(REDACTED));
    }
}
