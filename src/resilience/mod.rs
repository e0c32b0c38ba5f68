//! Resiliency as daprd applies it to a pub/sub component: retry policies
//! ([`retry`]), circuit breakers ([`breaker`]) and the choice of policies
//! for a target and direction ([`policy`]). Used by the delivery engine
//! (inbound: calls to the app) and the publish path (outbound: calls to
//! the broker).

pub mod breaker;
pub mod outbound;
pub mod policy;
pub mod retry;
