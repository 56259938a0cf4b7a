//! The scheduler: every `scheduler.interval` (and right after start) it rotates
//! the keys whose policy makes them due (certifying each new version when the
//! policy names a CA), renews certificates near their expiry, and retires the
//! versions whose grace period has ended. Every replica runs it; each due
//! rotation is claimed in the database by exactly one of them. Rotations and
//! certificates are audited with the actor `scheduler`, failed ones too.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::audit::{Action, Actor, Audit};
use crate::catalog::KeyRecord;
use crate::gateway::{Gateway, GatewayError};

/// Runs the scheduler until `stop` turns true; a pass under way is finished.
pub fn spawn(
    gateway: Arc<Gateway>,
    audit: Audit,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.wait_for(|stop| *stop) => true,
            };
            if stopping {
                return;
            }
            run_once(&gateway, &audit).await;
        }
    })
}

/// One pass: due rotations, due certificate renewals, then ended grace periods.
pub async fn run_once(gateway: &Gateway, audit: &Audit) {
    let now = SystemTime::now();
    for (record, result) in gateway.rotate_due(now).await {
        match result {
            Ok(rotated) => {
                tracing::info!(kid = %record.kid, version = rotated.record.version, "scheduled rotation");
                if let Some(Err(e)) = rotated.certificate {
                    record_failure(audit, &rotated.record, Action::CertificateIssue, e).await;
                }
            }
            Err(e) => {
                tracing::warn!(kid = %record.kid, error = %e, "scheduled rotation failed");
                record_failure(audit, &record, Action::Rotate, e).await;
            }
        }
    }
    for (record, result) in gateway.renew_certificates(now).await {
        match result {
            Ok(()) => {
                tracing::info!(kid = %record.kid, version = record.version, "certificate renewed")
            }
            Err(e) => {
                tracing::warn!(kid = %record.kid, error = %e, "certificate renewal failed");
                record_failure(audit, &record, Action::CertificateIssue, e).await;
            }
        }
    }
    gateway.end_graces(now).await;
}

/// Audits a failure of the scheduler's work on `record`'s key (what it did is
/// recorded by the gateway, with the change).
async fn record_failure(audit: &Audit, record: &KeyRecord, action: Action, error: GatewayError) {
    let code = error.code().as_str();
    let actor = Actor::scheduler(record.tenant.as_deref());
    let event = actor.event(action, &record.kid, &record.provider, code);
    if let Err(e) = audit.record(event).await {
        tracing::warn!(kid = %record.kid, error = %e, action = action.as_str(),
            "the scheduler's work could not be audited");
    }
}
