//! `drover serve`: the coordinator's server. [`serve`] prepares the data directory
//! ([`setup`]), opens the [`store`], builds the [`service`] and serves the HTTPS API
//! ([`http`]) until told to stop. The service resolves each host's desired state
//! ([`fleet`]), signs manifests, takes reports, drives rollouts ([`rollout`]), keeps
//! artifacts ([`blobs`]), issues certificates ([`pki`]) and counts ([`metrics`]).

pub mod blobs;
pub mod clock;
pub mod fleet;
pub mod http;
pub mod metrics;
pub mod pki;
pub mod records;
pub mod rollout;
pub mod serve;
pub mod service;
pub mod setup;
pub mod store;

use crate::error::Error;

/// `drover serve`: starts, serves until SIGTERM or SIGINT, then drains.
pub async fn run(args: serve::ServeArgs) -> Result<(), Error> {
    let database = args.database()?;
    let running = serve::start(serve::ServeOptions {
        listen: args.listen,
        data_dir: args.data_dir,
        public_url: args.public_url,
        keys: args.keys,
        manifest_ttl: args.manifest_ttl,
        server_names: args.server_names,
        host_certificate_validity: args.host_certificate_validity,
        server_certificate_validity: args.server_certificate_validity,
        database,
        artifact_registry: args.artifact_registry,
    })
    .await?;
    running.wait(Box::pin(termination())).await;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers there is nothing to wait for but the process's end.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}
