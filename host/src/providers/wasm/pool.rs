//! Warm guest instances of one provider. Each instance is instantiated and `init`ed
//! once, then reused; concurrent calls use different instances and wait (bounded)
//! when all are busy. An instance that trapped or timed out is dropped, and a
//! fresh one is made when next needed. So is an instance that holds more wasi
//! resources after a call than after its `init`: nothing a call started (a pending
//! request, a stream, a header set) outlives that call.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use wasmtime::{Engine, Store};

use super::bindings::kmsgw::adapter::types::{
    Capabilities as GuestCapabilities, Error as GuestError,
};
use super::host::{GuestShared, HostState};
use super::versions::{Guest, GuestPre};
use super::{GuestFailure, guest_call_outcome};

/// A live guest instance: its store, its exports, and how many wasi resources it
/// held once initialised.
pub struct Instance {
    pub store: Store<HostState>,
    pub guest: Guest,
    resources_at_rest: usize,
}

/// The instances of one provider.
pub struct Pool {
    engine: Engine,
    pre: GuestPre,
    shared: Arc<GuestShared>,
    config_json: String,
    idle: Mutex<Vec<Instance>>,
    permits: Semaphore,
    size: usize,
    timeout: Duration,
}

/// One instance lent out for a call. Dropped without [`Lease::release`], the
/// instance is thrown away.
pub struct Lease<'a> {
    pool: &'a Pool,
    instance: Option<Instance>,
    _permit: SemaphorePermit<'a>,
}

impl Lease<'_> {
    /// The leased instance.
    pub fn instance(&mut self) -> &mut Instance {
        self.instance
            .as_mut()
            .expect("a lease holds its instance until released")
    }

    /// Returns the instance to the pool for reuse, unless the call left wasi
    /// resources behind: then the instance is dropped with them.
    pub fn release(mut self) {
        if let Some(mut instance) = self.instance.take() {
            let held = instance.store.data_mut().resources_held();
            if held > instance.resources_at_rest {
                self.pool
                    .shared
                    .counters
                    .recycled
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(provider = %self.pool.shared.provider_id, held,
                    "guest call left resources behind; its instance is replaced");
                return;
            }
            self.pool.idle.lock().expect("pool lock").push(instance);
        }
    }

    /// What the guest wrote to stderr (panic messages), for the log.
    pub fn stderr(&self) -> String {
        self.instance
            .as_ref()
            .map(|i| {
                String::from_utf8_lossy(&i.store.data().stderr.contents())
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    }
}

impl Pool {
    /// A pool of instances of `pre` (as many as `shared.limits` says), each given
    /// `config_json` at init.
    pub fn new(
        engine: Engine,
        pre: GuestPre,
        shared: Arc<GuestShared>,
        config_json: String,
    ) -> Self {
        let size = shared.limits.instances.max(1);
        let timeout = shared.limits.timeout();
        Pool {
            engine,
            pre,
            shared,
            config_json,
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Semaphore::new(size),
            size,
            timeout,
        }
    }

    /// Makes every instance now, so the first requests find them warm; returns
    /// the capabilities the guest reported.
    ///
    /// # Errors
    /// When an instance cannot be made or its `init` fails.
    pub async fn warm_up(&self) -> Result<GuestCapabilities, GuestFailure> {
        let mut capabilities = None;
        for _ in 0..self.size {
            let (instance, caps) = self.create().await?;
            capabilities = Some(caps);
            self.idle.lock().expect("pool lock").push(instance);
        }
        capabilities.ok_or(GuestFailure::Init("the pool has no instances".into()))
    }

    /// Number of instances.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Number of instances currently lent out.
    pub fn in_use(&self) -> usize {
        self.size - self.permits.available_permits()
    }

    async fn create(&self) -> Result<(Instance, GuestCapabilities), GuestFailure> {
        let mut store = Store::new(&self.engine, HostState::new(Arc::clone(&self.shared)));
        store.limiter(|state| &mut state.limits);
        // Yield to the async runtime on every epoch tick, so the caller's deadline
        // can stop a guest that never returns.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        let guest = match tokio::time::timeout(self.timeout, self.pre.instantiate_async(&mut store))
            .await
        {
            Ok(Ok(guest)) => guest,
            Ok(Err(e)) => return Err(GuestFailure::Init(format!("instantiation failed: {e:#}"))),
            Err(_) => return Err(GuestFailure::Timeout),
        };
        let outcome =
            tokio::time::timeout(self.timeout, guest.init(&mut store, &self.config_json)).await;
        let capabilities = guest_call_outcome(outcome).map_err(|failure| match failure {
            GuestFailure::Guest(GuestError::InvalidInput(message)) => GuestFailure::Config(message),
            GuestFailure::Guest(e) => GuestFailure::Init(format!("init refused the config: {e:?}")),
            other => other,
        })?;
        let resources_at_rest = store.data_mut().resources_held();
        Ok((
            Instance {
                store,
                guest,
                resources_at_rest,
            },
            capabilities,
        ))
    }

    /// Lends an instance, waiting up to the call timeout when all are busy.
    ///
    /// # Errors
    /// [`GuestFailure::Busy`] when none frees up in time; failures making a new instance.
    pub async fn acquire(&self) -> Result<Lease<'_>, GuestFailure> {
        let permit = tokio::time::timeout(self.timeout, self.permits.acquire())
            .await
            .map_err(|_| GuestFailure::Busy(self.size))?
            .expect("the pool semaphore is never closed");
        let idle = self.idle.lock().expect("pool lock").pop();
        let instance = match idle {
            Some(instance) => instance,
            None => self.create().await?.0,
        };
        Ok(Lease {
            pool: self,
            instance: Some(instance),
            _permit: permit,
        })
    }
}
