//! Certificates of key versions: requests (CSRs) and certificates signed through
//! the signing key's own provider, imported chains checked before they are
//! stored, leaves issued to new versions by a key's certificate policy and
//! renewed near their expiry.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use x509_cert::certificate::Certificate;

use super::{Gateway, GatewayError};
use crate::audit::{Action, Actor};
use crate::catalog::{CatalogError, CertificatePolicy, KeyRecord};
use crate::providers::{KeyRef, ToSign};
use crate::x509::{self, CertError, CertificateSpec, IssuerSpec};

/// The longest certificate validity accepted, in days (about 100 years).
const MAX_VALIDITY_DAYS: u32 = 36_500;

/// `POST /keys/{kid}/certificate/issue`, and what a certificate policy issues.
#[derive(Debug, Default)]
pub struct IssueRequest {
    pub subject: String,
    pub validity_days: u32,
    /// The CA key (same tenant); `None` for a self-signed certificate.
    pub issuer_kid: Option<String>,
    /// Whether the new certificate is a CA certificate.
    pub ca: bool,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    /// RFC 5280 key usage names; empty: the default of a CA or a leaf.
    pub key_usage: Vec<String>,
}

impl From<&CertificatePolicy> for IssueRequest {
    fn from(policy: &CertificatePolicy) -> Self {
        IssueRequest {
            subject: policy.subject.clone(),
            validity_days: policy.validity_days,
            issuer_kid: Some(policy.issuer_kid.clone()),
            ..IssueRequest::default()
        }
    }
}

impl From<CertError> for GatewayError {
    fn from(e: CertError) -> Self {
        GatewayError::Certificate(e)
    }
}

fn x5c(chain: &[Vec<u8>]) -> Vec<String> {
    chain.iter().map(|der| STANDARD.encode(der)).collect()
}

impl Gateway {
    /// Signs `message` with `record`'s version through its provider, checked like
    /// every other signature.
    async fn sign_as(&self, record: &KeyRecord, message: &[u8]) -> Result<Vec<u8>, GatewayError> {
        let provider = self.provider_of(record)?;
        let signature = provider
            .sign(&KeyRef::from(record), ToSign::Message(message))
            .await
            .map_err(|e| self.sign_failed(record, e))?;
        self.check_signature(
            provider.as_ref(),
            record,
            ToSign::Message(message),
            &signature,
        )?;
        Ok(signature)
    }

    /// A PKCS#10 request (PEM) for the current version of `kid`, signed through its
    /// provider.
    ///
    /// # Errors
    /// Unknown kid, a bad subject or name, backend failures.
    pub async fn csr(
        &self,
        tenant: Option<&str>,
        kid: &str,
        subject: &str,
        dns_names: &[String],
        uris: &[String],
    ) -> Result<String, GatewayError> {
        let record = self.key(tenant, kid).await?;
        let prepared =
            x509::prepare_request(subject, dns_names, uris, &record.public_jwk, record.alg)?;
        let signature = self.sign_as(&record, &prepared.to_sign).await?;
        Ok(x509::request_pem(&prepared.finish(&signature)?)?)
    }

    /// Stores an imported chain (PEM, leaf first) for the current version of
    /// `kid`, after checking that its leaf certifies that version's key, that every
    /// certificate is valid now and that each is signed by the next. Nothing is
    /// stored when a check fails.
    ///
    /// # Errors
    /// Unknown kid, [`GatewayError::Certificate`] naming the failed check.
    pub async fn import_certificate(
        &self,
        actor: Actor<'_>,
        kid: &str,
        pem: &str,
    ) -> Result<Arc<KeyRecord>, GatewayError> {
        let record = self.key(actor.tenant, kid).await?;
        let chain = x509::parse_chain(pem)?;
        x509::check_chain(&chain, &record.public_jwk, SystemTime::now())?;
        self.store_chain(actor, Action::CertificateImport, &record, &chain)
            .await?;
        Ok(record)
    }

    /// Issues a certificate for the current version of `kid`: self-signed, or by
    /// the key `issuer_kid`, whose current version must hold a CA certificate;
    /// the stored chain is the new certificate followed by the issuer's chain.
    ///
    /// # Errors
    /// Unknown kids, an issuer without a CA certificate, bad input, backend failures.
    pub async fn issue_certificate(
        &self,
        actor: Actor<'_>,
        kid: &str,
        request: &IssueRequest,
    ) -> Result<Arc<KeyRecord>, GatewayError> {
        let record = self.key(actor.tenant, kid).await?;
        self.certify(actor, &record, request).await?;
        Ok(record)
    }

    /// The chain (PEM, leaf first) of the current version of `kid`, if it has one.
    ///
    /// # Errors
    /// Unknown kid, catalog failures.
    pub async fn certificate_chain(
        &self,
        tenant: Option<&str>,
        kid: &str,
    ) -> Result<Option<String>, GatewayError> {
        let record = self.key(tenant, kid).await?;
        let Some(chain) = self.chain_of(&record).await? else {
            return Ok(None);
        };
        Ok(Some(x509::chain_pem(&chain)?))
    }

    /// The chain of `record`'s version (base64 DER, leaf first), if it has one.
    ///
    /// # Errors
    /// Catalog failures.
    pub async fn x5c_of(&self, record: &KeyRecord) -> Result<Option<Vec<String>>, GatewayError> {
        Ok(self
            .catalog
            .versions(&record.id)
            .await?
            .into_iter()
            .find(|v| v.version == record.version)
            .and_then(|v| v.x5c))
    }

    /// Up to `limit` keys of `tenant` after kid `after` whose current version has
    /// a certificate, with that chain.
    ///
    /// # Errors
    /// Catalog failures.
    pub async fn certified_keys(
        &self,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(KeyRecord, Vec<String>)>, GatewayError> {
        Ok(self.catalog.certified_keys(tenant, after, limit).await?)
    }

    /// The stored chain of `record`'s version.
    async fn chain_of(&self, record: &KeyRecord) -> Result<Option<Vec<Certificate>>, GatewayError> {
        let versions = self.catalog.versions(&record.id).await?;
        let Some(x5c) = versions
            .into_iter()
            .find(|v| v.version == record.version)
            .and_then(|v| v.x5c)
        else {
            return Ok(None);
        };
        let der = x5c
            .iter()
            .map(|b64| STANDARD.decode(b64))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                GatewayError::Catalog(crate::catalog::CatalogError::Corrupt(
                    "a certificate chain".into(),
                ))
            })?;
        Ok(Some(x509::from_der(&der)?))
    }

    /// Stores `chain` for `record`'s version with the audit record of `action`.
    async fn store_chain(
        &self,
        actor: Actor<'_>,
        action: Action,
        record: &KeyRecord,
        chain: &[Certificate],
    ) -> Result<(), GatewayError> {
        let der = x509::to_der(chain)?;
        let event = actor.event(action, &record.kid, &record.provider, "ok");
        let stored = async {
            let mut tx = self.audit.begin().await?;
            self.catalog
                .set_certificate(
                    &mut tx,
                    &record.id,
                    record.version,
                    &x5c(&der),
                    x509::validity(&chain[0]),
                )
                .await?;
            tx.commit(event).await
        }
        .await;
        self.invalidate(&record.id);
        match stored {
            Ok(()) => Ok(()),
            Err(CatalogError::Conflict) => Err(GatewayError::KeyNotFound(record.kid.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes and stores a certificate for `record`'s version as `request` says.
    async fn certify(
        &self,
        actor: Actor<'_>,
        record: &KeyRecord,
        request: &IssueRequest,
    ) -> Result<(), GatewayError> {
        let result = self.certify_unchecked(actor, record, request).await;
        self.certificates[usize::from(result.is_err())].fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn certify_unchecked(
        &self,
        actor: Actor<'_>,
        record: &KeyRecord,
        request: &IssueRequest,
    ) -> Result<(), GatewayError> {
        if request.validity_days == 0 || request.validity_days > MAX_VALIDITY_DAYS {
            return Err(CertError::Invalid(format!(
                "validityDays must be 1 to {MAX_VALIDITY_DAYS}"
            ))
            .into());
        }
        let spec = CertificateSpec {
            subject: &request.subject,
            validity: Duration::from_secs(u64::from(request.validity_days) * 86_400),
            ca: request.ca,
            dns_names: &request.dns_names,
            uris: &request.uris,
            key_usage: &request.key_usage,
        };
        let chain = match &request.issuer_kid {
            None => {
                let prepared =
                    x509::prepare_certificate(&spec, &record.public_jwk, None, record.alg)?;
                let signature = self.sign_as(record, &prepared.to_sign).await?;
                vec![prepared.finish(&signature)?]
            }
            Some(issuer_kid) => {
                let issuer = self.key(record.tenant.as_deref(), issuer_kid).await?;
                let issuer_chain = self
                    .chain_of(&issuer)
                    .await?
                    .filter(|chain| x509::is_ca(&chain[0]))
                    .ok_or_else(|| CertError::IssuerNotCa(issuer_kid.clone()))?;
                let issuer_spec = IssuerSpec {
                    certificate: &issuer_chain[0],
                    public_jwk: &issuer.public_jwk,
                    alg: issuer.alg,
                };
                let prepared = x509::prepare_certificate(
                    &spec,
                    &record.public_jwk,
                    Some(&issuer_spec),
                    issuer.alg,
                )?;
                let signature = self.sign_as(&issuer, &prepared.to_sign).await?;
                let mut chain = vec![prepared.finish(&signature)?];
                chain.extend(issuer_chain);
                chain
            }
        };
        self.store_chain(actor, Action::CertificateIssue, record, &chain)
            .await
    }

    /// Checks that a certificate policy can issue: its subject parses and its
    /// issuer exists in `tenant` with a CA certificate.
    ///
    /// # Errors
    /// [`GatewayError::Certificate`] or [`GatewayError::KeyNotFound`] saying what is wrong.
    pub async fn check_certificate_policy(
        &self,
        tenant: Option<&str>,
        policy: &CertificatePolicy,
    ) -> Result<(), GatewayError> {
        x509::subject(&policy.subject)?;
        if policy.validity_days == 0 || policy.validity_days > MAX_VALIDITY_DAYS {
            return Err(CertError::Invalid(format!(
                "certificate.validityDays must be 1 to {MAX_VALIDITY_DAYS}"
            ))
            .into());
        }
        let issuer = self.key(tenant, &policy.issuer_kid).await?;
        match self.chain_of(&issuer).await? {
            Some(chain) if x509::is_ca(&chain[0]) => Ok(()),
            _ => Err(CertError::IssuerNotCa(policy.issuer_kid.clone()).into()),
        }
    }

    /// Issues the leaf of `record`'s version under its key's certificate policy,
    /// if there is one; `None` without a policy.
    pub async fn certify_new_version(
        &self,
        actor: Actor<'_>,
        record: &KeyRecord,
    ) -> Option<Result<(), GatewayError>> {
        let policy = match self.catalog.policy(&record.id).await {
            Ok(policy) => policy.certificate?,
            Err(e) => return Some(Err(e.into())),
        };
        let result = self
            .certify(actor, record, &IssueRequest::from(&policy))
            .await;
        if let Err(e) = &result {
            tracing::warn!(kid = %record.kid, version = record.version, error = %e,
                "the new version got no certificate; the scheduler tries again");
        }
        Some(result)
    }

    /// Issues a fresh leaf to every key with a certificate policy whose current
    /// version has none yet, or one in the last tenth of its validity at `now`.
    pub async fn renew_certificates(
        &self,
        now: SystemTime,
    ) -> Vec<(KeyRecord, Result<(), GatewayError>)> {
        let due = match self.catalog.certificates_due(now).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the certificates due for renewal");
                return Vec::new();
            }
        };
        let mut done = Vec::new();
        for id in due {
            let Ok(Some(record)) = self.catalog.get(&id).await else {
                continue;
            };
            let actor = Actor::scheduler(record.tenant.as_deref());
            if let Some(result) = self.certify_new_version(actor, &record).await {
                done.push((record, result));
            }
        }
        done
    }

    /// Certificates issued, and issues that failed, since start.
    pub fn certificate_counts(&self) -> (u64, u64) {
        (
            self.certificates[0].load(Ordering::Relaxed),
            self.certificates[1].load(Ordering::Relaxed),
        )
    }
}
