//! The local fleet: real Kubernetes control planes, OCM and an OCI registry on
//! loopback, for end-to-end tests and for trying the product by hand.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use e2e::{FleetSpec, NodeSpec, SpokeSpec};
//! let fleet = e2e::Fleet::start(
//!     FleetSpec::new("my-test")
//!         .spoke(SpokeSpec::new("spoke-a").node(NodeSpec::new("n0", "5.14.0-427.el9.x86_64"))),
//! )
//! .await?;
//! let hub = fleet.hub_client(); // system:masters on the hub
//! let spoke = fleet.spoke("spoke-a").client.clone();
//! # Ok(()) }
//! ```
//!
//! Binaries come from `ci/build-bins.sh` (see [`bins::Bins::locate`]). Every
//! process runs in its own process group with its log under
//! `<fleet dir>/logs/`; dropping the [`Fleet`] (also while a test panics)
//! kills them all, and a watchdog does the same if the test process dies
//! without unwinding.

pub mod bench;
pub mod bench_hub;
pub mod bench_spoke;
pub mod bins;
pub mod certs;
pub mod cluster;
pub mod executor;
pub mod fleet;
pub mod kmods;
pub mod kwok;
pub mod net;
pub mod ocm;
pub mod proc;
pub mod registry;
pub mod testkit;
pub mod wait;

pub use cluster::KubeCluster;
pub use fleet::{Fleet, FleetSpec, Spoke, SpokeSpec};
pub use kwok::NodeSpec;
pub use registry::{Registry, RegistrySpec};
