//! The HTTP side of the one port: reading a request head, deciding the answer, writing it.
//!
//! Nothing here touches a socket or mio: the connection hands in bytes and gets back a decision.

pub mod request;
pub mod response;
pub mod route;
pub mod upgrade;

pub use request::Request;
pub use response::Response;
pub use route::{Route, RouteContext, route};
pub use upgrade::Upgrade;
