//! A faithful stand-in for Tradecloud, for tests, the demo and `tradecloud-bridge simulate`.
//!
//! * [`api`]: the order and authentication API (v2 header-based token flow, single-use refresh
//!   tokens, expiring access tokens, `GET /v2/order/{id}` with versions that grow as orders change,
//!   legacy API v1 with Basic auth, HTTP 429 above the rate limit, injectable 503s).
//! * [`orders`]: deterministic orders and event bodies in Tradecloud's shapes.
//! * [`idp`]: the customer's identity provider (Entra-shaped JWKS and token endpoints, key
//!   rotation), for the connector's OAuth 2.0 client-credentials auth.
//! * [`sender`]: calls a webhook like Tradecloud does (GET/POST/PUT, TLS, Basic, Bearer or OAuth,
//!   retrying only on statuses above 500 and on connection failures).

pub mod api;
pub mod idp;
pub mod orders;
pub mod sender;

pub use api::{SimConfig, Simulator, TRACES_KEPT, TraceSeen};
pub use idp::{Idp, IdpConfig};
pub use sender::{OAuthClient, Outcome, Sender, SenderAuth, SenderConfig, Webhook};
