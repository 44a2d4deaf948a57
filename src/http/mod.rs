//! Plain HTTP on the public listener: the HTTP API ([`api`], enabled by `[api] key`), pages
//! ([`pages`]), embedded files ([`assets`]) and response helpers ([`response`]). Which request goes where is the gate's
//! decision (`gate::plan_upgrade`).

pub(crate) mod api;
pub(crate) mod assets;
pub(crate) mod io;
pub(crate) mod pages;
pub(crate) mod response;
pub(crate) mod sse;
