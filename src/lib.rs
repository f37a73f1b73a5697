//! accessgate: the code behind Microsoft Entra ID Governance custom extensions.
//!
//! Entra calls [`ingress`] (standalone) or [`functions`] (Azure Functions custom handler); both
//! run [`intake`] (size, [`auth`], [`callout`] parsing) and queue a [`queue::JobMessage`]; the
//! [`worker`] applies the [`policy`] and resumes the request through [`graph`].
//! See ARCHITECTURE.md for the codemap and its invariants.
#![forbid(unsafe_code)]

pub mod activation;
pub mod app;
pub mod approval;
pub mod arm;
pub mod auth;
pub mod bridge;
pub mod callout;
pub mod capture;
pub mod checks;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod directory;
pub mod doctor;
pub mod endpoint;
pub mod functions;
pub mod graph;
pub mod http_server;
pub mod ingress;
pub mod intake;
pub mod json_lookup;
pub mod lenient;
pub mod outbound;
pub mod pim;
pub mod policy;
pub mod queue;
pub mod resilience;
pub mod secret;
pub mod settings;
pub mod setup;
pub mod state;
pub mod strict_json;
pub mod telemetry;
pub mod tickets;
pub mod worker;
