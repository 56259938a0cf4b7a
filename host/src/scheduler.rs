//! The scheduler: every `scheduler.interval` (and right after start) it rotates
//! the keys whose policy makes them due and retires the versions whose grace
//! period has ended. Every replica runs it; each due rotation is claimed in the
//! database by exactly one of them. Rotations are audited with the actor
//! `scheduler`, failed ones too.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::api::error::ApiError;
use crate::audit::{Action, Audit, Event};
use crate::gateway::Gateway;

/// Runs the scheduler until the process ends.
pub fn spawn(gateway: Arc<Gateway>, audit: Audit, interval: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            run_once(&gateway, &audit).await;
        }
    });
}

/// One pass: due rotations, then ended grace periods.
pub async fn run_once(gateway: &Gateway, audit: &Audit) {
    let now = SystemTime::now();
    for (record, result) in gateway.rotate_due(now).await {
        let outcome = match result {
            Ok(rotated) => {
                tracing::info!(kid = %record.kid, version = rotated.version, "scheduled rotation");
                "ok"
            }
            Err(e) => {
                tracing::warn!(kid = %record.kid, error = %e, "scheduled rotation failed");
                ApiError::from(e).code()
            }
        };
        let event = Event {
            api_key: Some("scheduler".into()),
            tenant: record.tenant.clone(),
            action: Action::Rotate,
            kid: Some(record.kid.clone()),
            provider: Some(record.provider.clone()),
            outcome: outcome.to_owned(),
            message_sha256: None,
        };
        if let Err(e) = audit.record(event).await {
            tracing::warn!(kid = %record.kid, error = %e, "the scheduled rotation could not be audited");
        }
    }
    gateway.end_graces(now).await;
}
