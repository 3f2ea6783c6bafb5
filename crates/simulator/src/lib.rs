//! A faithful stand-in for Tradecloud, for tests, the demo and `tradecloud-bridge simulate`,
//! built from Tradecloud's documents rather than from the bridge's model.
//!
//! * [`documents`]: Tradecloud's documented examples (proposal, reopen request, confirmation
//!   with charge lines, cancellation, documents event, single-delivery event, split line, legacy
//!   purchase order), from which every order and webhook below is built.
//! * [`api`]: the order and authentication API over HTTP or HTTPS (v2 header-based token flow,
//!   single-use refresh tokens that expire after 24 hours, access tokens after one, `GET
//!   /v2/order/{id}` with versions that grow as orders change, legacy API v1 with Basic auth,
//!   HTTP 429 above the rate limit) and the faults the real API shows: 500/502/503/504, 403,
//!   429 with `Retry-After`, slow answers ([`Fault`]).
//! * [`orders`]: orders and webhook bodies (`orderEvent`, `orderDocumentsEvent`,
//!   `singleDeliveryOrderEvent`) from the documents, deterministic per order id and version.
//! * [`idp`]: the customer's identity provider (Entra-shaped JWKS and token endpoints, key
//!   rotation), for the connector's OAuth 2.0 client-credentials auth.
//! * [`sender`]: calls a webhook like Tradecloud does (GET/POST/PUT, TLS, Basic, Bearer or OAuth,
//!   retrying only on statuses above 500 and on connection failures).

pub mod api;
pub mod documents;
pub mod idp;
pub mod orders;
pub mod sender;

pub use api::{Fault, SimConfig, Simulator, TRACES_KEPT, TraceSeen};
pub use idp::{Idp, IdpConfig};
pub use sender::{OAuthClient, Outcome, Sender, SenderAuth, SenderConfig, Webhook};
